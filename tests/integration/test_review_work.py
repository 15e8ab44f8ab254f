"""The review app's work, as the workers' plain domain functions, called directly (no queue):
worker/trial.py answers a "try an image" request, worker/assessment.py writes a verdict's
assessment SR. What a real worker does with them is in test_web_worker.py."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from cxrtriage.config import Settings
from cxrtriage.db.accounts import add_user
from cxrtriage.db.feedback import give_feedback
from cxrtriage.db.models import AuditEvent, SrExport
from cxrtriage.db.session import Database, upgrade
from cxrtriage.db.trials import create_trial, trial_answer, trial_heatmap
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.worker.assessment import write_assessment
from cxrtriage.worker.runtime import Runtime
from cxrtriage.worker.trial import INTERNAL_ERROR, classify_trial
from tests.factory import SAMPLES, radiograph, write_study
from tests.web_seed import register, seed_study


@pytest.fixture
def rt(tmp_path: Path, tiny_package: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                        sr_destination="PACS@127.0.0.1:104", decode_processes=1)
    runtime = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    with runtime.db.session() as session:
        runtime.user_id = add_user(session, "alice", "a long password", "radiologist").id
    yield runtime
    runtime.close()
    runtime.db.engine.dispose()


def _trial(rt: Any, data: bytes, kind: str, token: str) -> int:
    spooled = rt.settings.storage_dir / "trials" / f"{token}.upload"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(data)
    with rt.db.session() as session:
        return create_trial(session, token, rt.user_id, kind, str(spooled))


def _png(height: int, width: int) -> bytes:
    buffer = BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "data", "state", "box"), [
    ("picture", _png(120, 90), "done", {"rows": 120, "columns": 90, "top": 0, "bottom": 120, "left": 0,
                                         "right": 90}),
    ("dicom", (SAMPLES / "pneumonia-1.dcm").read_bytes(), "done", None),
    ("picture", b"not a picture", "failed", None),
    ("dicom", b"not a DICOM file at all", "failed", None),
])
def test_a_trial_is_answered_and_its_upload_removed(rt: Any, kind: str, data: bytes, state: str,
                                                    box: dict[str, int] | None) -> None:
    trial_id = _trial(rt, data, kind, "a" * 32)
    assert classify_trial(rt, trial_id) == state
    assert not list((rt.settings.storage_dir / "trials").iterdir())
    with rt.db.session() as session:
        answer = trial_answer(session, "a" * 32, rt.user_id)
        heat = trial_heatmap(session, "a" * 32, rt.user_id)
    assert answer is not None and answer.state == state
    if state == "done":
        assert answer.result["flag_label"] == "PNEUMONIA" and answer.error == ""
        assert set(answer.result["probabilities"]) == {"NORMAL", "PNEUMONIA"}
        assert heat is not None and Image.open(BytesIO(heat[0])).size == (64, 64)  # the model's square
        if box is not None:
            assert answer.result["box"] == box and answer.result["aspect"] == 1.0
    else:
        assert heat is None and answer.error and answer.error != INTERNAL_ERROR
    assert classify_trial(rt, trial_id) == state  # a redelivered message changes nothing


def test_an_unknown_or_missing_trial(rt: Any) -> None:
    assert classify_trial(rt, 12345) == "gone"
    trial_id = _trial(rt, _png(10, 10), "picture", "b" * 32)
    (rt.settings.storage_dir / "trials" / f"{'b' * 32}.upload").unlink()
    assert classify_trial(rt, trial_id) == "failed"
    with rt.db.session() as session:
        answer = trial_answer(session, "b" * 32, rt.user_id)
        assert answer is not None and "no longer there" in answer.error
        assert trial_answer(session, "b" * 32, rt.user_id + 1) is None  # another user's: not found


class _Dispatcher:
    def __init__(self) -> None:
        self.studies: list[str] = []

    def study_exports(self, _db: Any, _settings: Any, study_uid: str) -> int:
        self.studies.append(study_uid)
        return 1


def test_an_assessment_sr_is_written_once_per_verdict(rt: Any, tmp_path: Path) -> None:
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
    from cxrtriage.domain import ModelInfo, Prediction

    image = radiograph()
    [image_path] = write_study(tmp_path / "in", [image])
    model = ModelInfo("seed-model", "1.0.0", "tests", "1.2.3", "ab" * 32)
    prediction = Prediction(str(image.SOPInstanceUID), {"NORMAL": 0.1, "PNEUMONIA": 0.9}, True, 0.5,
                            "PNEUMONIA")
    ai_sr = build_report(StudyReport(model, "PNEUMONIA", 0.5, [prediction], [clean_header(image)], True),
                         report_uids(str(image.StudyInstanceUID), "ai", model))
    ai_path = tmp_path / "ai-sr.dcm"
    ai_sr.save_as(ai_path, enforce_file_format=True)
    with rt.db.session() as session:
        study_uid = seed_study(session, register(session), [0.9], paths=[str(image_path)])
        export = session.scalar(select(SrExport).order_by(SrExport.id.desc()).limit(1))
        export.path, export.sr_sop_instance_uid = str(ai_path), str(ai_sr.SOPInstanceUID)
        no_sr = seed_study(session, register(session, "2.0.0"), [0.2])  # its AI SR file is missing
        first = give_feedback(session, study_uid, rt.user_id, "alice", "disagree", "atelectasis").event_id
        second = give_feedback(session, study_uid, rt.user_id, "alice", "agree", "").event_id
        orphan = give_feedback(session, no_sr, rt.user_id, "alice", "agree", "").event_id
    dispatcher = _Dispatcher()
    one = write_assessment(rt, dispatcher, first)
    two = write_assessment(rt, dispatcher, second)
    assert one and two and one != two
    assert write_assessment(rt, dispatcher, first) == one  # redelivered: recorded once
    assert write_assessment(rt, dispatcher, orphan) is None
    assert write_assessment(rt, dispatcher, 999999) is None
    assert dispatcher.studies == [study_uid, study_uid]
    with rt.db.session() as session:
        rows = session.execute(select(SrExport.sr_sop_instance_uid, SrExport.state, SrExport.path)
                               .where(SrExport.kind == "assessment").order_by(SrExport.id)).all()
        audited = session.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.action == "assessment_sr"))
    assert [r[0] for r in rows] == [one, two] and {r[1] for r in rows} == {"pending"}
    assert all(Path(r[2]).is_file() for r in rows) and audited == 2
