"""Batching across studies: a worker claims the ready studies and classifies them in one forward
pass, yet each study keeps its own claim, its own error boundary and exactly one current SR,
with its own images only."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.models import InferenceResult, Instance, SrExport, Study
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ExportKind, Reason
from cxrtriage.models.examine import examine_file
from cxrtriage.models.inference import Classifier
from cxrtriage.worker import pipeline
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.runtime import Runtime
from tests.factory import radiograph
from tests.pipeline_steps import replace_step
from tests.received import current, receive, srs


@pytest.fixture
def rt(tmp_path: Path, tiny_package: Path) -> Iterator[Runtime]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                        batch_studies=3, decode_processes=2)
    runtime = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    yield runtime
    runtime.close()


def _studies(rt: Runtime, count: int) -> list[str]:
    uids = []
    for n in range(count):
        uid = generate_uid()
        images = [radiograph(uid, "pneumonia-1" if n % 2 else "normal-1", PatientID=f"PAT{n:04d}")]
        if n % 3 == 0:
            images.append(radiograph(uid, "pneumonia-2", PatientID=f"PAT{n:04d}"))
        uids.append(receive(rt, images))
    return uids


def _forward_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = Classifier.predict_with_heatmaps

    def counted(self: Classifier, uids: list[str], images: np.ndarray):  # type: ignore[no-untyped-def]
        sizes.append(len(images))
        return real(self, uids, images)

    monkeypatch.setattr(Classifier, "predict_with_heatmaps", counted)
    return sizes


def test_ready_studies_share_one_forward_pass_and_each_gets_its_own_sr(rt, monkeypatch) -> None:
    uids = _studies(rt, 5)
    sizes = _forward_passes(monkeypatch)
    first = process_ready(rt, uids[2])
    assert len(first) == 3 and uids[2] in first and set(first.values()) == {"done"}
    second = process_ready(rt, uids[0])  # the rest: a study split from its neighbours
    assert set(first) | set(second) == set(uids) and set(second.values()) == {"done"}
    assert process_ready(rt, uids[1]) == {}  # its message arrives late: nothing to do
    assert sizes == [4, 3] or sizes == [3, 4], sizes  # one pass per batch (images, not studies)

    unbatched = Classifier(rt.settings.model)
    for study_uid in uids:
        [sr] = current(srs(rt, study_uid))
        ds = pydicom.dcmread(sr.path)
        assert ds.StudyInstanceUID == study_uid
        with rt.db.session() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            own = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
            results = session.scalars(select(InferenceResult).where(
                InferenceResult.instance_id.in_([i.id for i in own]))).all()
            assert {str(pydicom.dcmread(i.path).PatientID) for i in own} == {ds.PatientID}
            referenced = {item.ReferencedSOPInstanceUID
                          for st in ds.CurrentRequestedProcedureEvidenceSequence
                          for series in st.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
            assert referenced == {i.sop_instance_uid for i in own}
            # the same probabilities as a study classified alone: the batch mixes nothing
            for instance in own:
                image = examine_file(instance.path, unbatched.manifest).image
                alone = unbatched.predict(["x"], image[None])[0]
                [row] = [r for r in results if r.instance_id == instance.id]
                assert row.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
            heatmaps = session.scalars(select(SrExport).where(SrExport.study_id == study.id,
                                                              SrExport.kind == ExportKind.HEATMAP)).all()
            assert len(heatmaps) == len(own)
            maps = session.scalars(select(SrExport).where(SrExport.study_id == study.id,
                                                          SrExport.kind == ExportKind.HEATMAP_SEG)).all()
            assert sorted(m.source_instance_id for m in maps) == sorted(i.id for i in own)


def test_a_failing_joint_pass_falls_back_to_each_study_alone(rt, monkeypatch) -> None:
    uids = _studies(rt, 3)
    real = Classifier.predict_with_heatmaps

    def fails_for_batches(self: Classifier, ids: list[str], images: np.ndarray):  # type: ignore[no-untyped-def]
        if len(images) > 2:
            raise RuntimeError("out of memory")  # what a too-large batch does on a GPU
        return real(self, ids, images)

    monkeypatch.setattr(Classifier, "predict_with_heatmaps", fails_for_batches)
    states = process_ready(rt, uids[0])
    assert states == {uid: "done" for uid in uids}


def test_one_bad_study_never_fails_its_neighbours(rt, monkeypatch) -> None:
    uids = _studies(rt, 3)
    bad = uids[1]
    real = pipeline.report

    def report(rt_: Runtime, run: pipeline.StudyRun) -> None:
        if run.claim.study_uid == bad and run.reason is None:
            raise ValueError("highdicom refused a value")
        real(rt_, run)

    replace_step(monkeypatch, "report", report)
    states = process_ready(rt, uids[0])
    assert states == {uids[0]: "done", bad: "failed", uids[2]: "done"}
    with rt.db.session() as session:
        assert session.scalar(select(Study.reason_code).where(Study.study_uid == bad)) == \
            Reason.REPORT_ERROR.value
    for uid in uids:
        [sr] = current(srs(rt, uid))
        assert sr.kind == (ExportKind.NOT_ANALYSED if uid == bad else ExportKind.ANALYSED)


def test_an_instance_arriving_during_a_batch_makes_its_study_read_again(rt, monkeypatch) -> None:
    uids = _studies(rt, 3)
    late = uids[2]
    real = pipeline.classify
    arrived: list[str] = []

    def classify(rt_: Runtime, run: pipeline.StudyRun) -> None:
        real(rt_, run)
        if run.claim.study_uid == late and not arrived:  # a late image, while the batch runs
            arrived.append(receive(rt_, [radiograph(late, "normal-2", PatientID="PAT0002")]))

    replace_step(monkeypatch, "classify", classify)
    states = process_ready(rt, uids[0])
    assert states[late] is None and states[uids[0]] == states[uids[1]] == "done"
    assert srs(rt, late) == []  # nothing stated about a study that changed while read
    again = process_ready(rt, late)
    assert again.get(late) == "done", again  # re-queued on arrival: read again, with both images
    [sr] = current(srs(rt, late))
    ds = pydicom.dcmread(sr.path)
    referenced = [item for st in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in st.ReferencedSeriesSequence for item in series.ReferencedSOPSequence]
    assert len(referenced) == 2


def test_a_killed_decoder_process_costs_time_not_studies(rt, monkeypatch) -> None:
    uids = _studies(rt, 3)
    real = pipeline.decode_ahead
    killed: list[int] = []

    def decode_then_kill(rt_: Runtime, runs: list[pipeline.StudyRun]) -> None:
        real(rt_, runs)
        assert any(run.decoding for run in runs), "the batch was not handed to the pool"
        for pid in rt_.decoder_pool.pids():  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    replace_step(monkeypatch, "decode ahead", decode_then_kill)
    assert process_ready(rt, uids[0]) == {uid: "done" for uid in uids}
    assert killed
    replace_step(monkeypatch, "decode ahead", real)  # the next batch gets a new pool
    more = _studies(rt, 2)
    assert process_ready(rt, more[0]) == {uid: "done" for uid in more}


def test_an_undecodable_image_fails_its_study_alone_through_the_pool(rt) -> None:
    from pydicom.uid import RLELossless

    uids = _studies(rt, 2)
    uid = generate_uid()
    broken = radiograph(uid, PatientID="PAT0099")
    broken.compress(RLELossless)
    frame = bytearray(broken.PixelData)
    broken.PixelData = bytes(frame[: len(frame) // 3])  # the encoded frame cut short
    bad = receive(rt, [broken, radiograph(uid, "normal-2", PatientID="PAT0099")])
    states = process_ready(rt, uids[0])
    assert states == {uids[0]: "done", uids[1]: "done", bad: "done"}  # its other image is read
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == bad))
        rows = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
        assert sorted(r.state for r in rows) == ["classified", "failed"]
        assert any("decoded" in r.reason for r in rows if r.state == "failed")
