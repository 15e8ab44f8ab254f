"""The review app's work done by a real worker (`cxrtriage worker`, the study queue, the filesystem
broker): "try an image" is answered by the worker while the page asks for the answer, and a
verdict's assessment SR is written by the worker. The app runs in process (TestClient) on the
same database, storage and broker folders."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, text

from cxrtriage.config import Settings
from cxrtriage.db.session import Database
from cxrtriage.web.app import create_app
from tests.conftest import assert_no_patient_data
from tests.factory import SAMPLES, radiograph, write_study
from tests.integration.test_web_api import ALICE, BOB, PASSWORD, _add_users, login
from tests.servers import Proc, binary, wait_for
from tests.web_seed import register, seed_study

DESTINATION = "PACS@127.0.0.1:104"  # nobody listens: exports stay pending (the exporter is not run)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_package: Path) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("webwork")
    url = f"sqlite:///{work / 'web.db'}"
    _add_users(url)
    env = {"CXRTRIAGE_DATABASE_URL": url, "CXRTRIAGE_STORAGE_DIR": str(work / "storage"),
           "CXRTRIAGE_BROKER_DIR": str(work / "broker"), "CXRTRIAGE_MODEL": str(tiny_package),
           "CXRTRIAGE_SR_DESTINATION": DESTINATION, "PYTHONUNBUFFERED": "1"}
    worker = Proc("worker", [sys.executable, "-m", "cxrtriage.cli", "worker", "--pool", "solo", "--queues",
                             "studies"], work, env=env, cwd=work)
    settings = Settings(database_url=url, storage_dir=work / "storage", broker_dir=work / "broker",
                        model=tiny_package, sr_destination=DESTINATION, web_assessment_sr=True)
    db = Database(url)
    try:
        with TestClient(create_app(settings, db)) as client:
            yield {"client": client, "db": db, "work": work, "worker": worker}
    except BaseException:
        worker.dump()
        raise
    finally:
        worker.stop()
        db.engine.dispose()
    assert_no_patient_data(worker.log(), "the worker's log")


def _upload(client: TestClient, csrf: str, name: str, data: bytes, kind: str = "image/png") -> Any:
    return client.post("/try", files={"file": (name, data, kind)}, data={"csrf_token": csrf})


def _answer(client: TestClient, page: str) -> dict[str, Any]:
    """What the page's script does: ask for the answer until it is no longer pending."""
    url = re.search(r'data-answer-url="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    def answered() -> dict[str, Any] | None:
        answer: dict[str, Any] = client.get(url).json()
        return answer if answer["state"] != "pending" else None

    found = wait_for(answered, 180, "the worker's answer", interval=0.3)
    assert isinstance(found, dict)
    return found


def _spooled(stack: dict[str, Any]) -> list[Path]:
    folder = stack["work"] / "storage" / "trials"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_try_an_image_is_answered_by_a_worker(stack: dict[str, Any]) -> None:
    client = stack["client"]
    csrf = login(client, "alice")
    picture = BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (300, 260), dtype=np.uint8)
    Image.fromarray(pixels).save(picture, "PNG")
    page = _upload(client, csrf, "chest.png", picture.getvalue())
    assert page.status_code == 200, page.text[-500:]
    shown = re.search(r'src="data:image/png;base64,([^"]+)"', page.text)
    assert shown is not None and "Waiting for a worker" in page.text
    preview = np.asarray(Image.open(BytesIO(base64.b64decode(shown.group(1)))))
    assert preview.shape == (300, 260)  # shown back as it is: no square, no blow-up

    answer = _answer(client, page.text)
    assert answer["state"] == "done", answer
    assert set(answer["probabilities"]) == {"NORMAL", "PNEUMONIA"} and answer["flag_label"] == "PNEUMONIA"
    assert answer["model_name"].startswith("test-random") and answer["probability"] == pytest.approx(
        answer["probabilities"]["PNEUMONIA"])
    overlay = client.get(answer["heatmap_url"])
    assert overlay.status_code == 200
    assert np.asarray(Image.open(BytesIO(overlay.content))).shape == (*preview.shape, 4)  # in register
    assert _spooled(stack) == [], "the worker left the upload behind"
    bob = TestClient(client.app)
    assert bob.get(f"/api/try/{answer['token']}", auth=BOB).status_code == 404  # alice's only
    login(bob, "bob")
    assert bob.get(answer["heatmap_url"]).status_code == 404

    dicom = _answer(client, _upload(client, csrf, "x.dcm", (SAMPLES / "normal-1.dcm").read_bytes(),
                                    "application/dicom").text)
    assert dicom["state"] == "done" and "NORMAL" in dicom["probabilities"]

    bad = _upload(client, csrf, "x.png", b"not an image")
    assert bad.status_code == 422 and "not a readable PNG/JPEG image" in bad.text
    huge = client.post("/try", content=b"x" * 16, headers={"content-length": str(2**40)})
    assert huge.status_code == 413
    assert _spooled(stack) == [] and client.get("/api/worklist").json() == []


def test_try_an_image_keeps_no_patient_data(stack: dict[str, Any], tmp_path: Path) -> None:
    """An upload with the sentinel patient: the request's row holds none of it (no file name,
    no header value), the answer carries the gate's note instead, and the upload is gone."""
    client = stack["client"]
    csrf = login(client, "alice")
    [path] = write_study(tmp_path, [radiograph(ViewPosition="LL")])  # the gate would skip a lateral
    page = _upload(client, csrf, "SENTINELNAME-LEAKCHECK.dcm", path.read_bytes(), "application/dicom")
    answer = _answer(client, page.text)
    assert answer["state"] == "done" and "the worker would not analyse this image" in answer["note"]
    with stack["db"].session() as session:
        rows = session.execute(text("SELECT token, kind, spool_path, state, error, result FROM trials")).all()
    assert_no_patient_data(repr(rows), "the trials table")
    assert _spooled(stack) == []


def test_assessment_sr_references_the_ai_sr(stack: dict[str, Any], tmp_path: Path) -> None:
    """With the setting on, a verdict becomes an SR (written by the worker) that references the AI
    SR, passes dciodvfy, is queued for export like any SR, and never becomes the study's current
    AI SR."""
    from cxrtriage.db.models import SrExport, Study
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
    from cxrtriage.domain import ModelInfo, Prediction

    db, client = stack["db"], TestClient(stack["client"].app)  # HTTP Basic: no session, no CSRF
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

    def assessments() -> list[tuple[str, str, str]]:
        with db.session() as session:
            rows = session.scalars(
                select(SrExport).where(SrExport.kind == "assessment", SrExport.study_id == study.id)
                .order_by(SrExport.id)).all()
            return [(r.path, r.state, r.destination) for r in rows]

    wait_for(lambda: len(assessments()) == 2, 180, "both assessment SRs", interval=0.3)
    paths = assessments()
    assert {p[1] for p in paths} == {"pending"} and paths[0][2] == DESTINATION
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
    audit = client.get("/api/audit", auth=("root", PASSWORD)).json()["events"]
    assert sum(e["action"] == "assessment_sr" and e["study_uid"] == study_uid for e in audit) == 2
