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
from tests.factory import SENTINELS, radiograph, write_study
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
        broker_dir=tmp_path / "broker",
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
    its MONOCHROME2 twin, at its own size (224 pixels square: not blown up to the display size)."""
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
    assert a.shape == (224, 224) and a.std() > 20
    assert np.abs(a - b).max() <= 1.0
    assert client.get(f"/studies/{study}/images/1.2.3.png").status_code == 404


def test_the_stored_heat_map_is_shown_over_its_image(env) -> None:
    """A heat map the worker stored (recorded with the image it was made from) is offered and
    drawn the image's own size, in true geometry; an image without one offers none (404)."""
    import pydicom
    from sqlalchemy import select

    from cxrtriage.db.models import Instance
    from cxrtriage.db.results import record_export
    from cxrtriage.dicom.heatmap_writer import build_heatmap
    from cxrtriage.dicom.preprocess import dataset_to_gray
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.domain import ExportKind, ModelInfo
    from cxrtriage.models.heatmap import overlay
    from cxrtriage.models.model_input import fit_to_square

    client = env["client"]
    with_map, without = write_study(env["tmp"] / "incoming",
                                    [radiograph(PixelSpacing=[0.1, 0.2]), radiograph()])
    ds = pydicom.dcmread(with_map)
    cam = np.zeros((64, 64), dtype=np.float32)
    cam[8:24, 40:56] = 1.0
    heatmap = build_heatmap(clean_header(ds), overlay(fit_to_square(dataset_to_gray(ds), 64), cam),
                            ModelInfo("seed-model", "1.0.0", "tests", "1.2.3", "ab" * 32), 1)
    heatmap_path = env["tmp"] / "heatmap.dcm"
    heatmap.save_as(heatmap_path, enforce_file_format=True)
    with env["db"].session() as session:
        mv = register(session)
        study = seed_study(session, mv, [0.7, 0.2], paths=[str(with_map), str(without)])
        instance = session.scalar(select(Instance).where(Instance.path == str(with_map)))
        record_export(session, study_id=instance.study_id, model_version_id=mv,
                      series_uid=str(heatmap.SeriesInstanceUID), sop_uid=str(heatmap.SOPInstanceUID),
                      supersedes_uid=None, kind=ExportKind.HEATMAP, path=str(heatmap_path), destination="",
                      source_instance_id=instance.id)
    login(client, "alice")
    first, second = client.get(f"/api/studies/{study}").json()["images"]
    assert first["heatmap_url"] and second["heatmap_url"] is None

    def png(url: str) -> np.ndarray:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
        return np.asarray(Image.open(BytesIO(answer.content)))

    image, heat = png(first["image_url"]), png(first["heatmap_url"])
    assert image.shape == (224, 448) and heat.shape == (224, 448, 4)  # columns 0.2 mm apart: twice as wide
    alpha = heat[..., 3]
    rows, columns = np.nonzero(alpha > 100)
    assert 28 <= rows.mean() <= 84 and 280 <= columns.mean() <= 392  # the square's hot corner, stretched
    assert png(first["full_image_url"]).shape == (224, 448)
    assert client.get(first["image_url"] + "?size=huge").status_code == 422
    sop = second["sop_instance_uid"]
    assert client.get(f"/studies/{study}/images/{sop}/heatmap.png").status_code == 404
