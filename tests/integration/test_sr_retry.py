"""SR delivery under outages, with real sockets: capped backoff past the old 6-attempt limit,
a horizon that ends in `failed` with its reason, a silent PACS bounded by the deadline, a
superseded SR before its successor, and re-sends recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches, retry_exports
from cxrtriage.db.models import SrExport, SrExportAttempt
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ModelInfo
from cxrtriage.worker.export import export_srs
from cxrtriage.worker.runtime import Runtime
from tests.factory import add_sr_export, radiograph
from tests.servers import LOOPBACK, Proc, binary, free_port, port_open, wait_for

MODEL = ModelInfo("m", "1", "cxr-triage", "1.2.826.0.1.3680043.10.1367.9", "ef" * 32)


def _runtime(tmp_path: Path, destination: str, **settings: object) -> Runtime:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    values = {"sr_retry_base_seconds": 0.05, "sr_retry_max_interval_seconds": 0.2,
              "sr_connect_timeout_seconds": 1.0, "sr_send_deadline_seconds": 3.0, **settings}
    config = Settings(database_url=url, storage_dir=tmp_path / "storage", sr_destination=destination,
                      **values)  # type: ignore[arg-type]
    return Runtime(config, Database(url), InstanceStore(config.storage_dir))


def _add_sr(rt: Runtime, tmp_path: Path, study_uid: str | None = None, n: int = 0) -> int:
    return add_sr_export(rt, tmp_path, MODEL, study_uid, f"test {n}")


def _row(rt: Runtime, export_id: int) -> SrExport:
    with rt.db.session() as session:
        row = session.get(SrExport, export_id)
        assert row is not None
        return row


def _attempt_until(rt: Runtime, export_id: int, done: set[str], limit: int) -> str:
    """Run the scheduler's selection and the worker's attempt, as the real processes do."""
    state = "pending"
    for _ in range(limit):
        with rt.db.session() as session:
            due = due_export_batches(session, hold_seconds=30)
        if any(export_id in batch for batch in due):
            [state] = export_srs(rt, [export_id])
            if state in done:
                return state
        else:
            time.sleep(0.02)
    return state


def test_backoff_is_capped_and_outlasts_six_attempts_then_fails_at_the_horizon(tmp_path):
    rt = _runtime(tmp_path, f"PACS@{LOOPBACK}:{free_port()}", sr_retry_horizon_seconds=4.0)
    export_id = _add_sr(rt, tmp_path)
    assert _attempt_until(rt, export_id, {"failed"}, 2000) == "failed"
    row = _row(rt, export_id)
    assert row.attempts > 6, "the old limit of 6 attempts must no longer end delivery"
    # Uncapped doubling from 0.05 s passes a 4 s horizon at the 7th attempt; capped at 0.2 s
    # there is room for about 20.
    assert row.attempts >= 9, "the wait between attempts was not capped"
    assert "retry horizon" in row.last_error and "not established" in row.last_error
    with rt.db.session() as session:
        attempts = session.scalars(select(SrExportAttempt).where(SrExportAttempt.export_id == export_id)
                                   .order_by(SrExportAttempt.id)).all()
    assert len(attempts) == row.attempts and all(a.finished_at and a.error for a in attempts)


def test_silent_pacs_costs_one_bounded_attempt(tmp_path):
    """A listener that accepts nothing and never answers: the attempt ends at its deadline."""
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        rt = _runtime(tmp_path, f"PACS@{LOOPBACK}:{port}")
        export_id = _add_sr(rt, tmp_path)
        start = time.monotonic()
        assert _attempt_until(rt, export_id, {"pending"}, 1) == "pending"
        elapsed = time.monotonic() - start
    assert elapsed < rt.settings.sr_send_deadline_seconds + 1.5
    assert _row(rt, export_id).attempts == 1


def test_superseded_sr_goes_first_and_resends_are_recorded(tmp_path):
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rt = _runtime(tmp_path, f"PACS@{LOOPBACK}:{port}")
    study_uid = str(radiograph().StudyInstanceUID)
    first, second = _add_sr(rt, tmp_path, study_uid, 1), _add_sr(rt, tmp_path, study_uid, 2)
    with rt.db.session() as session:
        assert due_export_batches(session, hold_seconds=0) == [[first]], \
            "the successor overtook its predecessor"
    scp = Proc("storescp", [binary("storescp"), "-aet", "PACS", "-od", str(inbox), "+uf", str(port)],
               tmp_path)
    try:
        wait_for(lambda: port_open(port), 30, "storescp")
        assert _attempt_until(rt, first, {"sent"}, 200) == "sent"
        assert _attempt_until(rt, second, {"sent"}, 200) == "sent"
        with rt.db.session() as session:
            assert len(retry_exports(session, destination="", study_uid=study_uid)) == 2
        assert _attempt_until(rt, first, {"sent"}, 200) == "sent"
        received = sorted(inbox.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    finally:
        scp.stop()
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in received]
    first_uid, second_uid = _row(rt, first).sr_sop_instance_uid, _row(rt, second).sr_sop_instance_uid
    assert uids == [first_uid, second_uid, first_uid], "predecessor, successor, then the re-send"
    row = _row(rt, first)
    assert row.sends == 2 and row.state == "sent"
    with rt.db.session() as session:
        resends = session.scalars(select(SrExportAttempt.resend).where(
            SrExportAttempt.export_id == first).order_by(SrExportAttempt.id)).all()
    assert resends == [False, True]


def test_exports_command_lists_by_state_and_retries(tmp_path):
    rt = _runtime(tmp_path, f"PACS@{LOOPBACK}:{free_port()}", sr_retry_horizon_seconds=0.1)
    export_id = _add_sr(rt, tmp_path)
    assert _attempt_until(rt, export_id, {"failed"}, 200) == "failed"
    env = {**os.environ, "CXRTRIAGE_DATABASE_URL": rt.settings.database_url,
           "CXRTRIAGE_SR_DESTINATION": rt.settings.sr_destination}

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    listed = json.loads(cli("exports", "--state", "failed", "--json"))
    assert listed["counts"] == {"failed": 1}
    [row] = listed["exports"]
    assert row["id"] == export_id and "retry horizon" in row["last_error"]
    assert "failed: 1" in cli("exports")
    assert "1 exports queued" in cli("exports", "retry", "--state", "failed")
    again = _row(rt, export_id)
    assert (again.state, again.attempts) == ("pending", 0), "retry starts a fresh horizon"
    assert json.loads(cli("exports", "--state", "failed", "--json"))["exports"] == []


def test_due_exports_narrowed_to_the_rows_just_recorded_are_held_once(tmp_path):
    rt = _runtime(tmp_path, f"PACS@{LOOPBACK}:{free_port()}")
    first, other = _add_sr(rt, tmp_path, n=1), _add_sr(rt, tmp_path, n=2)
    with rt.db.session() as session:
        assert due_export_batches(session, hold_seconds=30, export_ids=[first]) == [[first]]
    with rt.db.session() as session:  # held: not due again; the other row was not touched
        assert due_export_batches(session, hold_seconds=30, export_ids=[first, other]) == [[other]]
