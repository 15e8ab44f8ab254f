"""SR sending: a down destination is retried with backoff until the limit, every attempt recorded;
a listening one (dcmtk storescp) receives the SR."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_exports
from cxrtriage.db.models import SrExport
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ModelInfo
from cxrtriage.worker.export import export_sr
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
            assert due_exports(session, hold_seconds=60) == [export_id]
        assert export_sr(rt, export_id) in ("pending", "failed")
        row = _row(rt, export_id)
        assert row.attempts == attempt and "not established" in row.last_error
        if row.next_attempt_at is not None:
            gaps.append((row.next_attempt_at - row.created_at).total_seconds())
            with rt.db.session() as session:
                assert due_exports(session, hold_seconds=60) == []  # not due before its backoff
            time.sleep(0.2 * 2 ** (attempt - 1) + 0.05)
    assert _row(rt, export_id).state == "failed"
    assert gaps[1] > gaps[0], "backoff grows"


def test_listening_destination_receives_the_sr(tmp_path):
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scp = Proc("storescp", [binary("storescp"), "-aet", "PACS", "-od", str(inbox), str(port)], tmp_path)
    try:
        wait_for(lambda: port_open(port), 30, "storescp")
        rt, export_id = _runtime(tmp_path, f"PACS@127.0.0.1:{port}")
        assert export_sr(rt, export_id) == "sent"
        row = _row(rt, export_id)
        assert row.attempts == 1 and row.sent_at is not None
        received = [pydicom.dcmread(p) for p in inbox.iterdir()]
        assert [str(ds.SOPInstanceUID) for ds in received] == [row.sr_sop_instance_uid]
    finally:
        scp.stop()
