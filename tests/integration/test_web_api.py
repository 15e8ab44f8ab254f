"""The review app's API and pages, called in process (FastAPI's TestClient) on a migrated
SQLite database seeded through db/ functions."""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from cxrtriage.config import Settings
from cxrtriage.db.accounts import add_user, disable_user
from cxrtriage.db.models import utcnow
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import Reason
from cxrtriage.web.app import create_app
from tests.conftest import assert_no_patient_data
from tests.factory import SAMPLES, SENTINELS, radiograph, write_study
from tests.servers import start_postgres
from tests.web_seed import register, seed_study

PASSWORD = "correct horse battery"
ALICE = ("alice", PASSWORD)
BOB = ("bob", PASSWORD)


def _add_users(url: str) -> None:
    upgrade(url)
    db = Database(url)
    with db.session() as session:
        add_user(session, "alice", PASSWORD, "radiologist")
        add_user(session, "bob", PASSWORD, "radiologist")
        add_user(session, "root", PASSWORD, "admin")
        add_user(session, "carol", PASSWORD, "radiologist")
        disable_user(session, "carol")
    if url.startswith("sqlite"):
        with db.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.engine.dispose()


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the test users, made once and copied for each test."""
    path = tmp_path_factory.mktemp("webdb") / "web.db"
    _add_users(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server for the tests that also run there (production's database)."""
    proc, url = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(params=["sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path, tiny_package: Path) -> Iterator[dict[str, Any]]:
    if request.param == "postgresql":
        import psycopg

        server = request.getfixturevalue("postgres_url")
        name = f"web_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = server.rsplit("/", 1)[0] + f"/{name}"
        _add_users(url)
    else:
        shutil.copy(request.getfixturevalue("template_db"), tmp_path / "web.db")
        url = f"sqlite:///{tmp_path / 'web.db'}"
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        model=tiny_package,
        web_escalation_minutes=60,
        web_login_attempts=3,
        web_viewer_url="https://pacs.example/viewer?StudyInstanceUIDs={study_uid}",
    )
    db = Database(url)
    app = create_app(settings, db)
    with TestClient(app) as client:
        yield {"client": client, "db": db, "app": app, "tmp": tmp_path}
    db.engine.dispose()


BOTH_DATABASES = pytest.mark.parametrize("env", ["sqlite", "postgresql"], indirect=True)


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token (from a page's form)."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = client.get("/")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def uids(client: TestClient, query: str = "", auth: tuple[str, str] = ALICE) -> list[str]:
    answer = client.get(f"/api/worklist{query}", auth=auth)
    assert answer.status_code == 200, answer.text
    return [item["study_uid"] for item in answer.json()]


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, ("alice", "wrong password"), ("carol", PASSWORD), ("nobody", PASSWORD)],
    ids=["no credentials", "wrong password", "disabled user", "unknown user"],
)
def test_api_refuses_without_valid_credentials(env, auth) -> None:
    answer = env["client"].get("/api/worklist", auth=auth)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert env["client"].get("/api/worklist", auth=ALICE).status_code == 200


def test_every_route_but_health_and_metrics_needs_a_user(env) -> None:
    """Walk the app's own route table, so a route added later without the dependency fails here."""
    client = env["client"]
    open_paths = {"/healthz", "/metrics", "/login", "/static"}
    checked = 0
    routes = []
    for route in env["app"].routes:  # newer FastAPI keeps included routers as one entry
        included = getattr(route, "original_router", None)
        routes += list(included.routes) if included is not None else [route]
    for route in routes:
        path = getattr(route, "path", "")
        if path in open_paths:
            continue
        concrete = re.sub(r"\{[^}]+\}", "1.2.3", path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method == "HEAD":
                continue
            answer = client.request(method, concrete, follow_redirects=False)
            expected = 401 if path.startswith("/api/") else 303
            assert answer.status_code == expected, (method, path, answer.status_code)
            if expected == 303:
                assert answer.headers["location"].startswith("/login")
            checked += 1
    assert checked >= 15
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/metrics").status_code == 200


def test_disabled_user_loses_open_session(env) -> None:
    client = env["client"]
    login(client, "bob")
    assert client.get("/", follow_redirects=False).status_code == 200
    with env["db"].session() as session:
        disable_user(session, "bob")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.get("/api/worklist").status_code == 401


def test_session_cookie_flags(env) -> None:
    client = env["client"]
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = [v for k, v in answer.headers.multi_items() if k == "set-cookie" and "cxrtriage_session=" in v][
        0
    ]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain HTTP here
    secure = TestClient(env["app"], base_url="https://review.example")
    form = secure.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = secure.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = [v for k, v in answer.headers.multi_items() if k == "set-cookie" and "cxrtriage_session=" in v][
        0
    ]
    assert "Secure" in cookie


def test_login_rate_limit(env) -> None:
    client = env["client"]
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    statuses = [
        client.post(
            "/login",
            data={"username": "alice", "password": f"guess {i}", "csrf_token": token},
            follow_redirects=False,
        ).status_code
        for i in range(3)
    ]
    assert statuses == [401, 401, 401]
    right = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert right.status_code == 429  # even the right password waits out the window
    other = client.post(
        "/login",
        data={"username": "bob", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
        headers={"x-forwarded-for": "10.0.0.9"},
    )
    assert other.status_code == 429  # same client address: throttled too


# --- CSRF --------------------------------------------------------------------------------------


def test_csrf_rejection(env) -> None:
    client = env["client"]
    with env["db"].session() as session:
        study = seed_study(session, register(session), [0.9])
    csrf = login(client, "alice")
    url = f"/studies/{study}/feedback"
    assert client.post(url, data={"verdict": "agree"}, follow_redirects=False).status_code == 403
    assert (
        client.post(
            url, data={"verdict": "agree", "csrf_token": "forged"}, follow_redirects=False
        ).status_code
        == 403
    )
    assert client.post(f"/api/studies/{study}/feedback", json={"verdict": "agree"}).status_code == 403
    assert client.post("/logout", follow_redirects=False).status_code == 403
    ok = client.post(url, data={"verdict": "agree", "csrf_token": csrf}, follow_redirects=False)
    assert ok.status_code == 303
    ok = client.post(
        f"/api/studies/{study}/feedback", json={"verdict": "uncertain"}, headers={"x-csrf-token": csrf}
    )
    assert ok.status_code == 200
    # The sign-in form has its own token (a cookie and the same value in the form).
    fresh = TestClient(env["app"])
    assert (
        fresh.post(
            "/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": "x"},
            follow_redirects=False,
        ).status_code
        == 403
    )
    # HTTP Basic callers need a JSON body: a cross-site form cannot send one.
    fresh = TestClient(env["app"])
    assert (
        fresh.post(f"/api/studies/{study}/feedback", data={"verdict": "agree"}, auth=ALICE).status_code == 403
    )


# --- worklist ----------------------------------------------------------------------------------


@BOTH_DATABASES
def test_worklist_order_escalation_and_filters(env) -> None:
    client = env["client"]
    now = utcnow()
    with env["db"].session() as session:
        mv = register(session)
        low_old = seed_study(session, mv, [0.10], received_at=now - timedelta(hours=3))
        mid = seed_study(session, mv, [0.40, 0.20], received_at=now - timedelta(minutes=5))
        flagged_b = seed_study(session, mv, [0.70], received_at=now - timedelta(minutes=2))
        flagged_a = seed_study(session, mv, [0.30, 0.95], received_at=now - timedelta(minutes=1))
        low_new = seed_study(session, mv, [0.05], received_at=now - timedelta(minutes=1))
        skipped = seed_study(session, mv, None, reason=Reason.NO_FRONTAL_CHEST_IMAGE)
        waiting = seed_study(session, mv, [0.5], finished=False)
        mv2 = register(session, "2.0.0")
        other_version = seed_study(session, mv2, [0.2], received_at=now - timedelta(minutes=3))
    order = uids(client)
    # Flagged by probability; the old unreviewed low score escalated above the other analysed
    # studies; then by probability; the not-analysed study last; the one in progress absent.
    assert order == [flagged_a, flagged_b, low_old, mid, other_version, low_new, skipped]
    items = client.get("/api/worklist", auth=ALICE).json()
    first = items[0]
    assert set(first) >= {
        "study_uid",
        "state",
        "reason",
        "flagged",
        "probability",
        "model_version",
        "received_at",
        "verdict",
    }
    assert first["probability"] == pytest.approx(0.95) and first["flagged"] is True
    assert first["received_at"].endswith("Z") and first["verdict"] is None
    assert items[2]["escalated"] is True and items[3]["escalated"] is False
    assert items[-1]["flagged"] is None and items[-1]["reason"].startswith("no frontal")

    # Once reviewed, the escalated study drops back to its place by probability.
    assert (
        client.post(f"/api/studies/{low_old}/feedback", json={"verdict": "agree"}, auth=BOB).status_code
        == 201
    )
    assert uids(client) == [flagged_a, flagged_b, mid, other_version, low_old, low_new, skipped]
    assert client.get("/api/worklist", auth=BOB).json()[4]["verdict"] == "agree"
    assert client.get("/api/worklist", auth=ALICE).json()[4]["verdict"] is None  # the caller's own verdict

    assert uids(client, "?flagged=true") == [flagged_a, flagged_b]
    assert uids(client, "?flagged=false") == [mid, other_version, low_old, low_new, skipped]
    assert uids(client, "?reviewed=true") == [low_old]
    assert low_old not in uids(client, "?reviewed=false")
    assert uids(client, "?state=in_progress") == [waiting]
    assert uids(client, "?state=skipped") == [skipped]
    assert uids(client, "?model_version=2.0.0") == [other_version]
    today = now.date().isoformat()
    assert set(uids(client, f"?since={today}&until={today}")) <= set(order)
    assert uids(client, "?until=2000-01-01") == []
    assert uids(client, "?per_page=2&page=2") == [mid, other_version]
    answer = client.get("/api/worklist?per_page=2", auth=ALICE)
    assert answer.headers["x-total-count"] == "7"
    for bad in ("?flagged=maybe", "?state=bogus", "?since=yesterday", "?per_page=0"):
        assert client.get(f"/api/worklist{bad}", auth=ALICE).status_code == 422, bad


# --- feedback ----------------------------------------------------------------------------------


@BOTH_DATABASES
def test_feedback_replace_and_history(env) -> None:
    client = env["client"]
    with env["db"].session() as session:
        mv = register(session)
        study = seed_study(session, mv, [0.8])
        pending = seed_study(session, mv, [0.8], finished=False)
    url = f"/api/studies/{study}/feedback"
    first = client.post(
        url, json={"verdict": "agree", "comment": "consolidation right lower lobe"}, auth=ALICE
    )
    assert first.status_code == 201
    again = client.post(
        url, json={"verdict": "disagree", "comment": "on second look, atelectasis"}, auth=ALICE
    )
    assert again.status_code == 200
    assert client.post(url, json={"verdict": "uncertain"}, auth=BOB).status_code == 201
    assert client.post(url, json={"verdict": "maybe"}, auth=ALICE).status_code == 422
    assert client.post(url, json={"comment": "no verdict"}, auth=ALICE).status_code == 422
    assert (
        client.post("/api/studies/1.2.3.4/feedback", json={"verdict": "agree"}, auth=ALICE).status_code == 404
    )
    assert (
        client.post(f"/api/studies/{pending}/feedback", json={"verdict": "agree"}, auth=ALICE).status_code
        == 404
    )

    record = client.get(url, auth=ALICE).json()
    current = {f["username"]: f["verdict"] for f in record["current"]}
    assert current == {"alice": "disagree", "bob": "uncertain"}
    history = [(h["username"], h["detail"]["verdict"], h["detail"]["replaces"]) for h in record["history"]]
    assert history == [("alice", "agree", None), ("alice", "disagree", "agree"), ("bob", "uncertain", None)]
    assert client.get("/api/worklist", auth=ALICE).json()[0]["verdict"] == "disagree"
    study_json = client.get(f"/api/studies/{study}", auth=ALICE).json()
    assert study_json["my_verdict"] == "disagree" and study_json["has_result"] is True
    assert study_json["viewer_url"] == f"https://pacs.example/viewer?StudyInstanceUIDs={study}"

    # The audit log is append-only in the database itself.
    with pytest.raises(DatabaseError, match="append-only"), env["db"].session() as session:
        session.execute(text("UPDATE audit_log SET username = 'mallory'"))
    with pytest.raises(DatabaseError, match="append-only"), env["db"].session() as session:
        session.execute(text("DELETE FROM audit_log"))
    audit = client.get("/api/audit", auth=("root", PASSWORD))
    assert audit.status_code == 200
    assert {e["action"] for e in audit.json()["events"]} >= {"feedback", "study_view"}
    assert client.get("/api/audit", auth=ALICE).status_code == 403


# --- stats -------------------------------------------------------------------------------------


@BOTH_DATABASES
def test_stats_arithmetic(env) -> None:
    client = env["client"]
    with env["db"].session() as session:
        v1 = register(session, "1.0.0", threshold=0.5)
        flagged = [seed_study(session, v1, [p]) for p in (0.9, 0.8, 0.6)]
        unflagged = [seed_study(session, v1, [p]) for p in (0.1, 0.2)]
        seed_study(session, v1, None, reason=Reason.NO_FRONTAL_CHEST_IMAGE)
        v2 = register(session, "2.0.0", threshold=0.5)
        seed_study(session, v2, [0.3])
    fb = {
        (flagged[0], ALICE): "agree",
        (flagged[0], BOB): "agree",
        (flagged[1], ALICE): "disagree",
        (flagged[2], ALICE): "uncertain",
        (unflagged[0], ALICE): "agree",
        (unflagged[1], BOB): "disagree",
    }
    for (study, who), verdict in fb.items():
        assert (
            client.post(f"/api/studies/{study}/feedback", json={"verdict": "disagree"}, auth=who).status_code
            == 201
        )
        assert (
            client.post(f"/api/studies/{study}/feedback", json={"verdict": verdict}, auth=who).status_code
            == 200
        )
    stats = {s["model_version"]: s for s in client.get("/api/stats", auth=ALICE).json()}
    one = stats["1.0.0"]
    assert (one["studies"], one["flagged"], one["not_analysed"]) == (5, 3, 1)
    assert one["positive_rate"] == pytest.approx(3 / 5)
    # each user's current verdict once: replaced verdicts do not count
    assert (one["feedback"], one["agree"], one["disagree"], one["uncertain"]) == (6, 3, 2, 1)
    assert one["ppv"] == pytest.approx(2 / 3)  # flagged only: agree 2, disagree 1
    two = stats["2.0.0"]
    assert (two["studies"], two["flagged"], two["positive_rate"], two["feedback"], two["ppv"]) == (
        1,
        0,
        0.0,
        0,
        None,
    )
    dashboard = client.get("/api/dashboard", auth=ALICE).json()
    assert [v["model_version"] for v in dashboard["versions"]] == ["2.0.0", "1.0.0"]
    points = {o["model_version"]: o for o in dashboard["operating_points"]}
    # labels: flagged[0] positive, flagged[1] negative, unflagged[0] negative, unflagged[1] positive
    assert (points["1.0.0"]["tp"], points["1.0.0"]["fp"], points["1.0.0"]["fn"], points["1.0.0"]["tn"]) == (
        1,
        1,
        1,
        1,
    )
    page = client.get("/dashboard", auth=ALICE, follow_redirects=False)
    assert page.status_code == 303  # pages use the session, not Basic
    login(client, "alice")
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.text.count("<svg") >= 2 and "67%" in page.text


# --- metrics and logs --------------------------------------------------------------------------


@BOTH_DATABASES
def test_metrics_and_logs_carry_no_patient_data(env, caplog) -> None:
    client = env["client"]
    caplog.set_level(logging.DEBUG)
    files = write_study(env["tmp"] / "incoming", [radiograph(), radiograph(name="normal-1")])
    with env["db"].session() as session:
        mv = register(session)
        study = seed_study(session, mv, [0.9, 0.2], paths=[str(p) for p in files])
        seed_study(session, mv, None, reason=Reason.NO_FRONTAL_CHEST_IMAGE)
    csrf = login(client, "alice")
    page = client.get("/")
    assert SENTINELS["PatientName"].split("^")[0] in page.text  # the radiologist sees the patient
    assert SENTINELS["AccessionNumber"] in page.text
    study_page = client.get(f"/studies/{study}")
    assert study_page.status_code == 200 and SENTINELS["PatientID"] in study_page.text
    client.post(f"/studies/{study}/feedback", data={"verdict": "agree", "csrf_token": csrf})
    client.post("/login", data={"username": SENTINELS["PatientID"], "password": "x", "csrf_token": "x"})
    metrics = client.get("/metrics").text
    assert 'cxrtriage_studies{state="done"} 1.0' in metrics
    assert 'cxrtriage_studies{state="skipped"} 1.0' in metrics
    assert "cxrtriage_instances_stored_total 3.0" in metrics
    assert (
        'cxrtriage_classifications_total{flagged="true",model="seed-model",model_version="1.0.0"} 1.0'
        in metrics
    )
    assert 'cxrtriage_feedback_total{model_version="1.0.0",verdict="agree"} 1.0' in metrics
    assert 'cxrtriage_sr_exports{kind="analysed",state="not_configured"} 1.0' in metrics
    assert_no_patient_data(metrics, "/metrics")
    with env["db"].session() as session:  # patient text is escaped, never markup
        seed_study(session, mv, [0.99], details={"patient_name": "<script>alert(1)</script>"})
    page = client.get("/")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert_no_patient_data(caplog.text, "the review app's logs")


# --- images ------------------------------------------------------------------------------------


def test_study_image_is_rendered_from_the_stored_dicom(env) -> None:
    """The grayscale pipeline runs on the server: a MONOCHROME1 file paints the same picture as
    its MONOCHROME2 twin."""
    client = env["client"]
    inverted, plain = write_study(env["tmp"] / "incoming", [radiograph(monochrome1=True), radiograph()])
    with env["db"].session() as session:
        mv = register(session)
        study = seed_study(session, mv, [0.9], paths=[str(inverted)])
        twin = seed_study(session, mv, [0.9], paths=[str(plain)])
    login(client, "alice")

    def painted(uid: str) -> np.ndarray:
        image = client.get(f"/api/studies/{uid}").json()["images"][0]
        assert image["heatmap_url"] is None  # seeded without a stored heat map image
        png = client.get(image["image_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        return np.asarray(Image.open(BytesIO(png.content)), dtype=np.float32)

    a, b = painted(study), painted(twin)
    assert a.shape == (1024, 1024) and a.std() > 20
    assert np.abs(a - b).max() <= 1.0
    assert client.get(f"/studies/{study}/images/1.2.3.png").status_code == 404


def test_try_an_image_stores_nothing(env) -> None:
    client = env["client"]
    csrf = login(client, "alice")
    before = sorted(p.name for p in env["tmp"].rglob("*"))
    png = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260), dtype=np.uint8)).save(
        png, format="PNG"
    )
    answer = client.post(
        "/try", files={"file": ("chest.png", png.getvalue(), "image/png")}, data={"csrf_token": csrf}
    )
    assert answer.status_code == 200, answer.text[-500:]
    assert "PNEUMONIA" in answer.text and "data:image/png;base64," in answer.text
    dicom = client.post(
        "/try",
        files={"file": ("x.dcm", (SAMPLES / "normal-1.dcm").read_bytes(), "application/dicom")},
        data={"csrf_token": csrf},
    )
    assert dicom.status_code == 200 and "NORMAL" in dicom.text
    huge = client.post("/try", content=b"x" * 16, headers={"content-length": str(2**40)})
    assert huge.status_code == 413
    bad = client.post(
        "/try", files={"file": ("x.png", b"not an image", "image/png")}, data={"csrf_token": csrf}
    )
    assert bad.status_code == 422
    after = sorted(p.name for p in env["tmp"].rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("web.db")] == []
    assert client.get("/api/worklist").json() == []


# --- assessment SR (AIRA-like) -----------------------------------------------------------------


def test_assessment_sr_references_the_ai_sr(env, tmp_path) -> None:
    """With the setting on, a verdict becomes an SR that references the AI SR, passes dciodvfy,
    is queued for export like any SR, and never becomes the study's current AI SR."""
    import subprocess

    import pydicom
    from sqlalchemy import select

    from cxrtriage.db.models import SrExport, Study
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
    from cxrtriage.domain import ModelInfo, Prediction
    from tests.servers import binary

    db = env["db"]
    settings = env["app"].state.settings.model_copy(
        update={"web_assessment_sr": True, "sr_destination": "PACS@127.0.0.1:104"}
    )
    app = create_app(settings, db)
    client = TestClient(app)
    image = radiograph()
    model = ModelInfo("seed-model", "1.0.0", "tests", "1.2.3", "ab" * 32)
    header = clean_header(image)
    prediction = Prediction(str(image.SOPInstanceUID), {"NORMAL": 0.1, "PNEUMONIA": 0.9}, True, 0.5,
                            "PNEUMONIA")
    ai_sr = build_report(StudyReport(model, "PNEUMONIA", 0.5, [prediction], [header], True),
                         report_uids(str(image.StudyInstanceUID), "ai", model))
    ai_path = tmp_path / "ai-sr.dcm"
    ai_sr.save_as(ai_path, enforce_file_format=True)
    with db.session() as session:
        study_uid = seed_study(session, register(session), [0.9])
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        export = session.scalar(select(SrExport).where(SrExport.study_id == study.id))
        export.path = str(ai_path)
        export.sr_sop_instance_uid = str(ai_sr.SOPInstanceUID)
    url = f"/api/studies/{study_uid}/feedback"
    assert (
        client.post(url, json={"verdict": "disagree", "comment": "atelectasis"}, auth=ALICE).status_code
        == 201
    )
    assert client.post(url, json={"verdict": "agree"}, auth=ALICE).status_code == 200
    with db.session() as session:
        rows = session.scalars(
            select(SrExport).where(SrExport.kind == "assessment").order_by(SrExport.id)
        ).all()
        paths = [(r.path, r.state, r.destination) for r in rows]
    assert len(paths) == 2 and {p[1] for p in paths} == {"pending"} and paths[0][2] == "PACS@127.0.0.1:104"
    first = pydicom.dcmread(paths[0][0])
    assert first.StudyInstanceUID == ai_sr.StudyInstanceUID and first.SeriesNumber == 9903
    evidence = first.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID
    dump = subprocess.run(
        [binary("dsrdump"), "+Pu", paths[0][0]], capture_output=True, text=True, timeout=60
    ).stdout
    assert (
        "Disagree with the AI result" in dump and "atelectasis" in dump and str(ai_sr.SOPInstanceUID) in dump
    )
    checked = subprocess.run([binary("dciodvfy"), paths[0][0]], capture_output=True, text=True, timeout=60)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    assert (
        "Agree with the AI result"
        in subprocess.run([binary("dsrdump"), paths[1][0]], capture_output=True, text=True, timeout=60).stdout
    )
    # The study's SR is still the AI result, not the assessment.
    assert client.get(f"/api/studies/{study_uid}", auth=ALICE).json()["sr"]["kind"] == "analysed"


def test_heatmap_computed_when_the_worker_stored_none(env, tiny_package) -> None:
    """With CXRTRIAGE_HEATMAPS off the worker stores no heat map image; the app computes the map
    with the same weights (never with other weights) and overlays it."""
    from cxrtriage.db.results import register_model
    from cxrtriage.models.manifest import read_manifest

    client = env["client"]
    manifest = read_manifest(tiny_package)
    files = write_study(env["tmp"] / "incoming", [radiograph()])
    with env["db"].session() as session:
        same = register_model(session, manifest.model_info(), {"flag_label": "PNEUMONIA", "threshold": 0.5})
        study = seed_study(session, same, [0.7], paths=[str(files[0])])
        other = seed_study(session, register(session, "9.9.9"), [0.7], paths=[str(files[0])])
    login(client, "alice")
    image = client.get(f"/api/studies/{study}").json()["images"][0]
    assert image["heatmap_url"]
    overlay = client.get(image["heatmap_url"])
    assert overlay.status_code == 200
    rgba = np.asarray(Image.open(BytesIO(overlay.content)))
    assert rgba.shape == (1024, 1024, 4) and rgba[..., 3].max() > 50
    assert client.get(f"/api/studies/{other}").json()["images"][0]["heatmap_url"] is None
    sop = client.get(f"/api/studies/{other}").json()["images"][0]["sop_instance_uid"]
    assert client.get(f"/studies/{other}/images/{sop}/heatmap.png").status_code == 404
