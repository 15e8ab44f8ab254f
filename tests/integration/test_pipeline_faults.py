"""The pipeline's one error boundary: whatever any step raises, the study ends with exactly one
current SR that says "not analysed" and why, and that SR passes dciodvfy."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.models import Study
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ExportKind, Reason
from cxrtriage.worker import pipeline
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.runtime import Runtime
from tests.factory import radiograph
from tests.pipeline_steps import declared, replace_step
from tests.received import current, receive, srs
from tests.servers import binary


@pytest.fixture
def rt(tmp_path: Path, tiny_package: Path) -> Iterator[Runtime]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                        heatmaps=False)
    runtime = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    yield runtime
    runtime.close()


def assert_valid(path: str) -> None:
    result = subprocess.run([binary("dciodvfy"), path], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def study_reason(rt: Runtime, study_uid: str) -> tuple[str, str]:
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        return study.state, study.reason_code


def inject(monkeypatch: pytest.MonkeyPatch, step_name: str, error: Exception) -> list[int]:
    """Make `step_name` raise `error` the first time it runs."""
    calls: list[int] = []
    real = declared(step_name)

    def failing(rt: Runtime, run: pipeline.StudyRun) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error
        real(rt, run)

    replace_step(monkeypatch, step_name, failing)
    return calls


@pytest.mark.parametrize(("step", "error", "reason"), [
    ("read and gate", RuntimeError("injected"), Reason.INTERNAL_ERROR),
    ("read and gate", OSError("injected"), Reason.STORAGE_ERROR),
    ("preprocess", MemoryError(), Reason.INTERNAL_ERROR),
    ("classify", RuntimeError("injected"), Reason.MODEL_ERROR),
    ("report", ValueError("highdicom refused a value"), Reason.REPORT_ERROR),
    ("record", RuntimeError("injected"), Reason.INTERNAL_ERROR),
])
def test_a_failing_step_ends_in_one_not_analysed_sr(rt, monkeypatch, step, error, reason):
    uid = generate_uid()
    study_uid = receive(rt, [radiograph(uid), radiograph(uid, "normal-1")])
    calls = inject(monkeypatch, step, error)
    assert process_ready(rt, study_uid).get(study_uid) == "failed"
    assert calls, "the injected step never ran"
    assert study_reason(rt, study_uid) == ("failed", reason.value)
    [sr] = current(srs(rt, study_uid))
    assert sr.kind == ExportKind.NOT_ANALYSED
    assert_valid(sr.path)
    content = pydicom.dcmread(sr.path)
    assert reason.text in str(content.ContentSequence)


def test_attempt_limit_ends_in_a_not_analysed_sr(rt):
    study_uid = receive(rt, [radiograph()])
    with rt.db.session() as session:  # three workers died on it before
        session.execute(Study.__table__.update().values(attempts=rt.settings.study_max_attempts))
    assert process_ready(rt, study_uid).get(study_uid) == "failed"
    assert study_reason(rt, study_uid) == ("failed", Reason.ATTEMPTS_EXHAUSTED.value)
    [sr] = srs(rt, study_uid)
    assert_valid(sr.path)


def test_a_study_naming_two_patients_is_not_analysed_and_its_sr_names_one(rt):
    uid = generate_uid()
    first, other = radiograph(uid), radiograph(uid, "normal-1", PatientID="OTHERPATIENT9")
    study_uid = receive(rt, [first, other])
    assert process_ready(rt, study_uid).get(study_uid) == "failed"
    assert study_reason(rt, study_uid) == ("failed", Reason.PATIENT_IDENTITY_INCONSISTENT.value)
    [sr] = srs(rt, study_uid)
    assert_valid(sr.path)
    ds = pydicom.dcmread(sr.path)
    assert ds.PatientID == first.PatientID
    referenced = {item.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert referenced == {str(first.SOPInstanceUID)}


def test_rebuilding_an_sr_reuses_the_stored_bytes_and_new_content_supersedes(rt):
    uid = generate_uid()
    image = radiograph(uid)
    study_uid = receive(rt, [image])
    assert process_ready(rt, study_uid).get(study_uid) == "done"
    [first] = srs(rt, study_uid)
    stored = Path(first.path).read_bytes()
    with rt.db.session() as session:  # the same work again, as after a lost result
        session.execute(Study.__table__.update().values(state="queued", attempts=0))
    assert process_ready(rt, study_uid).get(study_uid) == "done"
    assert [r.sr_sop_instance_uid for r in srs(rt, study_uid)] == [first.sr_sop_instance_uid]
    assert Path(first.path).read_bytes() == stored
    image.PatientName = "CORRECTED^NAME"  # reconciliation: the same SOP UID, new content
    receive(rt, [image])
    assert process_ready(rt, study_uid).get(study_uid) == "done"
    rows = srs(rt, study_uid)
    assert len(rows) == 2 and rows[1].supersedes_uid == first.sr_sop_instance_uid
    assert current(rows) == [rows[1]]
    assert pydicom.dcmread(rows[1].path).PatientName == "CORRECTED^NAME"
