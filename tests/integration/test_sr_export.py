"""SR sending: a down destination is retried with backoff until the limit, every attempt recorded;
a listening one (dcmtk storescp) receives the SR."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches
from cxrtriage.db.models import SrExport
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ModelInfo
from cxrtriage.worker.export import export_srs
from cxrtriage.worker.runtime import Runtime
from tests.factory import add_sr_export
from tests.servers import Proc, binary, free_port, port_open, wait_for

MODEL = ModelInfo("m", "1", "cxr-triage", "1.2.826.0.1.3680043.10.1367.9", "ef" * 32)


def _runtime(tmp_path: Path, destination: str) -> tuple[Runtime, int]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", sr_destination=destination,
                        sr_max_attempts=3, sr_retry_base_seconds=0.2)
    rt = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    export_id = add_sr_export(rt, tmp_path, MODEL)
    return rt, export_id


def _row(rt: Runtime, export_id: int) -> SrExport:
    with rt.db.session() as session:
        row = session.scalar(select(SrExport).where(SrExport.id == export_id))
        assert row is not None
        return row


def test_down_destination_backs_off_then_fails(tmp_path):
    rt, export_id = _runtime(tmp_path, f"PACS@127.0.0.1:{free_port()}")  # nothing listens there
    gaps = []
    for attempt in range(1, 4):
        with rt.db.session() as session:
            assert due_export_batches(session, hold_seconds=60) == [[export_id]]
        assert export_srs(rt, [export_id]) in (["pending"], ["failed"])
        row = _row(rt, export_id)
        assert row.attempts == attempt and "not established" in row.last_error
        if row.next_attempt_at is not None:
            gaps.append((row.next_attempt_at - row.created_at).total_seconds())
            with rt.db.session() as session:
                assert due_export_batches(session, hold_seconds=60) == []  # not due before its backoff
            time.sleep(0.2 * 2 ** (attempt - 1) + 0.05)
    assert _row(rt, export_id).state == "failed"
    assert gaps[1] > gaps[0], "backoff grows"


@dataclass
class Pacs:
    """dcmtk's storescp as the SR destination: its inbox, and its log (verbose: one line per
    association it accepts)."""

    destination: str
    inbox: Path
    proc: Proc


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    proc = Proc("storescp", [binary("storescp"), "-v", "-aet", "PACS", "-od", str(inbox), str(port)],
                tmp_path)
    try:
        wait_for(lambda: port_open(port), 30, "storescp")
        yield Pacs(f"PACS@127.0.0.1:{port}", inbox, proc)
    finally:
        proc.stop()


def test_listening_destination_receives_the_sr(tmp_path, pacs):
    rt, export_id = _runtime(tmp_path, pacs.destination)
    assert export_srs(rt, [export_id]) == ["sent"]
    row = _row(rt, export_id)
    assert row.attempts == 1 and row.sent_at is not None
    received = [pydicom.dcmread(p) for p in pacs.inbox.iterdir()]
    assert [str(ds.SOPInstanceUID) for ds in received] == [row.sr_sop_instance_uid]


def test_a_studys_sr_and_heatmaps_go_out_over_one_association(tmp_path, pacs):
    import numpy as np

    from cxrtriage.db.models import Study
    from cxrtriage.db.results import record_export
    from cxrtriage.dicom.heatmap_map import build_heatmap_segmentation
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.domain import ExportKind
    from tests.factory import radiograph

    rt, sr_id = _runtime(tmp_path, pacs.destination)
    with rt.db.session() as session:
        sr = session.get(SrExport, sr_id)
        assert sr is not None
        study = session.get(Study, sr.study_id)
        assert study is not None
        image = radiograph(study.study_uid)  # stands in for the heatmap: any storable image
        path = tmp_path / "heatmap.dcm"
        image.save_as(path, enforce_file_format=True)
        heatmap_id = record_export(
            session, study_id=sr.study_id, model_version_id=sr.model_version_id,
            series_uid=str(image.SeriesInstanceUID), sop_uid=str(image.SOPInstanceUID),
            supersedes_uid=None, kind=ExportKind.HEATMAP, path=str(path),
            destination=rt.settings.sr_destination).id
        activation = np.zeros((image.Rows, image.Columns), np.float32)
        activation[50:100, 60:120] = 0.75
        seg = build_heatmap_segmentation(clean_header(image), image, activation, MODEL, "PNEUMONIA", 1)
        seg_path = tmp_path / "heatmap-seg.dcm"
        seg.save_as(seg_path, enforce_file_format=True)
        seg_id = record_export(
            session, study_id=sr.study_id, model_version_id=sr.model_version_id,
            series_uid=str(seg.SeriesInstanceUID), sop_uid=str(seg.SOPInstanceUID),
            supersedes_uid=None, kind=ExportKind.HEATMAP_SEG, path=str(seg_path),
            destination=rt.settings.sr_destination).id
    with rt.db.session() as session:
        batches = due_export_batches(session, hold_seconds=60)
    assert batches == [[sr_id, heatmap_id, seg_id]]
    assert export_srs(rt, batches[0]) == ["sent", "sent", "sent"]
    received = [pydicom.dcmread(p) for p in pacs.inbox.iterdir()]
    assert len(received) == 3 and str(seg.SOPInstanceUID) in {str(ds.SOPInstanceUID) for ds in received}
    assert pacs.proc.log().count("Association Acknowledged") == 1  # (the port probe is not one)


def test_an_unsendable_object_does_not_hold_back_the_others(tmp_path, pacs):
    """Of two exports sent together, one has lost its file: the other is still sent, and the
    missing one records why and stays pending."""
    rt, sr_id = _runtime(tmp_path, pacs.destination)
    missing_id = add_sr_export(rt, tmp_path, MODEL, key="second")
    Path(_row(rt, missing_id).path).unlink()  # its file is gone
    states = export_srs(rt, [sr_id, missing_id])
    assert states == ["sent", "pending"]
    assert "FileNotFoundError" in _row(rt, missing_id).last_error
    assert len(list(pacs.inbox.iterdir())) == 1
