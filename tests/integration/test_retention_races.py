"""Acknowledged means kept: an instance re-sent while its study is being purged is still on disk
and indexed afterwards, and its study is analysed, not "not analysed". The race is made
deterministic by holding the purge's transaction at the point of conflict (the study marked
purged, its row held and its files listed, none yet removed) while a real sender re-sends the
instance through the real receiver, until the receiver waits for that row (PostgreSQL: seen in
pg_stat_activity; SQLite: it has started indexing, and its write waits for the purge's).

And refused payloads have their own retention, on by default, applied by the scheduler."""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from cxrtriage.config import Settings
from cxrtriage.db.models import Association, Instance, Rejection, Study, utcnow
from cxrtriage.db.retention import Purge
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.receiver import SUCCESS, Receiver, ReceiverLimits
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ExportKind
from cxrtriage.worker import retention
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.receiving import DatabaseIndex
from cxrtriage.worker.retention import apply_retention
from cxrtriage.worker.runtime import Runtime
from cxrtriage.worker.scheduler import run_scheduler
from tests.conftest import FAILED
from tests.factory import radiograph
from tests.received import current, requeue, srs
from tests.servers import LOOPBACK, Proc, free_port, start_postgres, wait_for

DAY = 86400.0


class WatchedIndex(DatabaseIndex):
    """The real index; `indexing` is set when the receiver starts indexing an instance."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, "retention-race")
        self.indexing = threading.Event()

    def instance_stored(self, *args: Any, **kwargs: Any) -> None:
        self.indexing.set()
        super().instance_stored(*args, **kwargs)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    proc, url = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield proc, url
    finally:
        proc.stop()


def _database_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Proc | None]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db.sqlite", None
    proc, url = request.getfixturevalue("postgres")
    name = f"retention_{uuid.uuid4().hex[:12]}"  # a fresh database per test, one server
    base = make_url(url)
    with psycopg.connect(host=base.host, port=base.port, user=base.username, dbname=base.database,
                         autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return base.set(database=name).render_as_string(hide_password=False), proc


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path,
          tiny_package: Path) -> Iterator[tuple[Runtime, WatchedIndex, int]]:
    url, server = _database_url(request, tmp_path)
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                        heatmaps=False, decode_processes=0, retention_days=5)
    rt = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    index = WatchedIndex(rt.db)
    receiver = Receiver("CXRTRIAGE", rt.store, index, ReceiverLimits(heartbeat_seconds=3600))
    port = free_port()
    receiver.start(LOOPBACK, port)
    try:
        yield rt, index, port
    finally:
        receiver.stop()
        rt.close()
        rt.db.engine.dispose()
        if server is not None and request.node.stash.get(FAILED, False):
            server.dump()


def _send(port: int, ds: pydicom.Dataset) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


class Resender(threading.Thread):
    """A modality with its association open (and recorded: on SQLite that record is a write,
    which a held purge would block), that sends the instance when told to."""

    def __init__(self, port: int, ds: pydicom.Dataset) -> None:
        super().__init__(daemon=True)
        self.port, self.ds = port, ds
        self.associated, self.go = threading.Event(), threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(self.ds.SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, self.port, ae_title="CXRTRIAGE")
        self.associated.set()
        if not assoc.is_established:
            return
        try:
            if self.go.wait(120):
                status = assoc.send_c_store(self.ds)
                self.statuses.append(int(status.Status) if "Status" in status else -1)
        finally:
            assoc.release()


def _open_associations(rt: Runtime) -> int:
    with rt.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Association)
                                  .where(Association.closed_at.is_(None))) or 0)


def _queued(rt: Runtime, study_uid: str) -> bool:
    """Queued once the receiver has recorded its association's close."""
    requeue(rt)
    with rt.db.session() as session:
        return session.scalar(select(Study.state).where(Study.study_uid == study_uid)) == "queued"


def _instance(rt: Runtime, sop_uid: str) -> Instance:
    with rt.db.session() as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
        session.expunge_all()
    assert row is not None, "the instance is not indexed"
    return row


def _analysed_ten_days_ago(rt: Runtime, port: int, ds: pydicom.Dataset) -> Path:
    """Received, analysed, and then left alone for ten days, as a study due for retention is."""
    study_uid = str(ds.StudyInstanceUID)
    assert _send(port, ds) == SUCCESS
    wait_for(lambda: _queued(rt, study_uid), 30, "the study queued")
    assert process_ready(rt, study_uid).get(study_uid) == "done"
    then = utcnow() - timedelta(days=10)
    with rt.db.session() as session:
        session.execute(update(Study).where(Study.study_uid == study_uid)
                        .values(finished_at=then, last_received_at=then))
    return Path(_instance(rt, str(ds.SOPInstanceUID)).path)


def _corrected(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same SOP Instance, sent again with a corrected attribute (new bytes, same identity)."""
    again = copy.deepcopy(ds)
    again.SeriesDescription = "corrected"
    return again


def _receiver_waits_for_the_row(rt: Runtime, index: WatchedIndex) -> bool:
    if not index.indexing.is_set():
        return False
    if rt.db.engine.dialect.name != "postgresql":
        return True  # SQLite: its write waits for the purge's; nothing shows that from outside
    with rt.db.session() as session:
        return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                        "WHERE wait_event_type = 'Lock' AND datname = current_database()")))


def _assert_kept_and_analysed(rt: Runtime, ds: pydicom.Dataset) -> None:
    study_uid = str(ds.StudyInstanceUID)
    row = _instance(rt, str(ds.SOPInstanceUID))
    path = Path(row.path)
    assert path.is_file(), "an acknowledged instance was deleted"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256, "the index names other bytes"
    requeue(rt)  # a changed instance sent the study back to received; the same one did not
    with rt.db.session() as session:
        state = session.scalar(select(Study.state).where(Study.study_uid == study_uid))
    if state == "queued":
        assert process_ready(rt, study_uid).get(study_uid) == "done"
    [sr] = current(srs(rt, study_uid))
    assert sr.kind == ExportKind.ANALYSED, "the study got a 'not analysed' SR"
    assert not any(r.kind == ExportKind.NOT_ANALYSED for r in srs(rt, study_uid))


@pytest.mark.parametrize("resend", ["the same file", "a corrected file"])
def test_an_instance_resent_while_its_study_is_purged_is_kept(stack, monkeypatch, resend):
    rt, index, port = stack
    ds = radiograph(generate_uid())
    old = _analysed_ten_days_ago(rt, port, ds)
    resender = Resender(port, ds if resend == "the same file" else _corrected(ds))
    resender.start()
    assert resender.associated.wait(30)
    wait_for(lambda: _open_associations(rt) == 1, 30, "the association recorded")
    index.indexing.clear()
    remove_files = retention.remove_files

    def at_the_point_of_conflict(purge: Purge) -> None:
        assert purge.paths == [str(old)], "the purge lists the study's file"
        resender.go.set()
        try:
            wait_for(lambda: _receiver_waits_for_the_row(rt, index), 60, "the re-sent instance at the index")
        except TimeoutError as exc:  # an OSError, which retention would count as a failed removal
            raise AssertionError(str(exc)) from None
        remove_files(purge)

    monkeypatch.setattr(retention, "remove_files", at_the_point_of_conflict)
    assert apply_retention(rt.db, rt.settings) == 1
    resender.join(60)
    assert resender.statuses == [SUCCESS], "the re-sent instance was not acknowledged"
    _assert_kept_and_analysed(rt, resender.ds)


def test_an_instance_indexed_before_the_purge_takes_the_row_stops_the_purge(stack, monkeypatch):
    """The other order: listed as a candidate, then an instance arrives and is indexed before
    the purge takes the study's row. The purge re-checks the row and leaves the study alone."""
    rt, _, port = stack
    ds = radiograph(generate_uid())
    path = _analysed_ten_days_ago(rt, port, ds)
    claim_purge = retention.claim_purge

    def claim_after_a_receipt(*args: Any, **kwargs: Any) -> Purge | None:
        assert _send(port, ds) == SUCCESS
        return claim_purge(*args, **kwargs)

    monkeypatch.setattr(retention, "claim_purge", claim_after_a_receipt)
    assert apply_retention(rt.db, rt.settings) == 0
    assert path.is_file()
    with rt.db.session() as session:
        assert session.scalar(select(Study.purged_at).where(Study.study_uid == ds.StudyInstanceUID)) is None
    _assert_kept_and_analysed(rt, ds)


def _quarantined(store: InstanceStore, payload: bytes) -> Path:
    """A refused payload, kept as the receiver keeps one: moved from the spool to rejected/."""
    store.spool.mkdir(parents=True, exist_ok=True)
    spooled = store.spool / f"cstore-{uuid.uuid4().hex}"
    spooled.write_bytes(payload)
    return store.quarantine_file(spooled)


def _rejection(db: Database, store: InstanceStore, age_days: float) -> tuple[int, Path]:
    path = _quarantined(store, b"refused payload")
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    with db.session() as session:
        row = Rejection(association_id="a", calling_ae="MOD", status=0xC210, reason="cannot be parsed",
                        sop_instance_uid=generate_uid(), quarantine_path=str(path),
                        created_at=utcnow() - timedelta(days=age_days))
        session.add(row)
        session.flush()
        return row.id, path


def test_refused_payloads_are_removed_after_their_own_retention_by_the_scheduler(tmp_path):
    assert Settings().quarantine_retention_days == 30, "on by default: refused payloads hold patient data"
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", sweep_interval_seconds=0.05)
    store = InstanceStore(settings.storage_dir)
    old_id, old = _rejection(db, store, 31)
    recent_id, recent = _rejection(db, store, 29)
    orphan = _quarantined(store, b"a payload whose refusal could not be recorded")
    os.utime(orphan, (time.time() - 31 * DAY, time.time() - 31 * DAY))
    stop = threading.Event()
    scheduler = threading.Thread(target=run_scheduler, args=(settings, stop), daemon=True)
    scheduler.start()
    try:
        wait_for(lambda: not old.exists() and not orphan.exists(), 30, "quarantine retention")
    finally:
        stop.set()
        scheduler.join(timeout=30)
    assert recent.exists()
    with db.session() as session:
        rows = {r.id: r for r in session.scalars(select(Rejection)).all()}
    assert rows[old_id].quarantine_path is None and rows[old_id].quarantine_removed_at is not None
    assert rows[old_id].reason == "cannot be parsed", "the refusal itself is kept"
    assert rows[recent_id].quarantine_path == str(recent) and rows[recent_id].quarantine_removed_at is None


def test_quarantine_retention_zero_keeps_refused_payloads(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", quarantine_retention_days=0)
    _, path = _rejection(db, InstanceStore(settings.storage_dir), 400)
    apply_retention(db, settings)
    assert path.exists()
