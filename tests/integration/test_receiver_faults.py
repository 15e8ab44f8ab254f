"""The receiver under faults, in process over real sockets and a real SQLite database:
association records that cannot wedge, the disk watermark, spooled C-STOREs and file modes."""

from __future__ import annotations

import shutil
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from cxrtriage.db.ingest import close_stale_associations, expire_associations, open_association
from cxrtriage.db.models import Association, Instance, Rejection, StudyDetails, utcnow
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.associations import Associations
from cxrtriage.dicom.receiver import OUT_OF_RESOURCES, SUCCESS, Receiver, ReceiverLimits
from cxrtriage.dicom.storage import InstanceStore, Watermark
from cxrtriage.worker.receiving import DatabaseIndex
from tests.factory import MALFORMED_SENTINELS, SENTINELS, radiograph, write_study
from tests.peers import storescu
from tests.servers import LOOPBACK, free_port, wait_for


class FlakyIndex(DatabaseIndex):
    """The real index, with chosen writes failing a given number of times (a database outage)."""

    def __init__(self, db: Database, receiver_id: str, fail: dict[str, int]) -> None:
        super().__init__(db, receiver_id)
        self.fail = dict(fail)

    def _maybe_fail(self, what: str) -> None:
        if self.fail.get(what, 0) > 0:
            self.fail[what] -= 1
            raise ConnectionError(f"injected failure of {what}")

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        self._maybe_fail("opened")
        super().association_opened(association_id, calling_ae, peer)

    def association_closed(self, association_id: str) -> None:
        self._maybe_fail("closed")
        super().association_closed(association_id)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    return Database(url)


def _receiver(tmp_path: Path, index: DatabaseIndex,
              watermark: Watermark | None = None) -> tuple[Receiver, int]:
    port = free_port()
    receiver = Receiver("CXRTRIAGE", InstanceStore(tmp_path / "storage"), index,
                        ReceiverLimits(heartbeat_seconds=3600), watermark=watermark)
    receiver.start(LOOPBACK, port)
    return receiver, port


def _statuses(port: int, datasets: list) -> list[int]:
    """C-STORE each data set over one association; the status of each, as the sender saw it."""
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _associations(db: Database) -> list[Association]:
    with db.session() as session:
        return list(session.scalars(select(Association)).all())


def test_a_failed_close_record_is_retried_not_forgotten(tmp_path, db):
    receiver, port = _receiver(tmp_path, FlakyIndex(db, "rx-1", {"closed": 1}))
    try:
        files = write_study(tmp_path / "send", [radiograph()])
        assert storescu(port, files).returncode == 0
        wait_for(lambda: not receiver.associations.open_ids(), 10, "the association to end")
        [row] = _associations(db)
        assert row.closed_at is None, "the close write was injected to fail"
        receiver.beat()
        [row] = _associations(db)
        assert row.closed_at is not None and row.receiver_id == "rx-1"
    finally:
        receiver.stop()


def test_an_unrecorded_association_stores_nothing_until_it_is_recorded(tmp_path, db):
    receiver, port = _receiver(tmp_path, FlakyIndex(db, "rx-1", {"opened": 2}))
    try:
        # The open write fails at accept and again at the first C-STORE (0xA700); the second
        # C-STORE records the association and is stored.
        assert _statuses(port, [radiograph(), radiograph()]) == [OUT_OF_RESOURCES, SUCCESS]
        with db.session() as session:
            instances = session.scalars(select(Instance)).all()
        assert len(instances) == 1
        assert len(_associations(db)) == 1
    finally:
        receiver.stop()


def test_stale_and_dead_associations_close_only_for_their_owner(db):
    with db.session() as session:
        open_association(session, "a" * 32, "MOD", "127.0.0.1:1", "rx-1")
        open_association(session, "b" * 32, "MOD", "127.0.0.1:2", "rx-2")
        open_association(session, "c" * 32, "MOD", "127.0.0.1:3", "rx-3")
    with db.session() as session:
        assert close_stale_associations(session, "rx-1") == 1  # rx-1 restarted
    with db.session() as session:
        session.get(Association, "b" * 32).last_seen_at = utcnow() - timedelta(seconds=600)  # type: ignore[union-attr]
    with db.session() as session:
        assert expire_associations(session, liveness_seconds=300) == 1  # rx-2 died
    closed = {row.id[0]: row.closed_at is not None for row in _associations(db)}
    assert closed == {"a": True, "b": True, "c": False}


def test_watermark_refuses_with_a700_records_it_and_leaves_no_file(tmp_path, db):
    free = shutil.disk_usage(tmp_path).free
    receiver, port = _receiver(tmp_path, DatabaseIndex(db, "rx-1"),
                               Watermark(min_free_bytes=free + 10**12))
    try:
        assert _statuses(port, [radiograph(generate_uid())]) == [OUT_OF_RESOURCES]
    finally:
        receiver.stop()
    with db.session() as session:
        rejections = session.scalars(select(Rejection)).all()
        assert session.scalars(select(Instance)).all() == []
    assert [(r.status, r.quarantine_path) for r in rejections] == [(OUT_OF_RESOURCES, None)]
    assert "CXRTRIAGE_MIN_FREE_BYTES" in rejections[0].reason
    leftovers = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
    assert leftovers == [], "a refused instance left a file behind"


def test_stored_files_are_spooled_on_the_volume_and_not_world_readable(tmp_path, db):
    receiver, port = _receiver(tmp_path, DatabaseIndex(db, "rx-1"))
    try:
        files = write_study(tmp_path / "send", [radiograph()])
        assert storescu(port, files).returncode == 0
    finally:
        receiver.stop()
    with db.session() as session:
        [instance] = session.scalars(select(Instance)).all()
    path = Path(instance.path)
    assert path.read_bytes()[128:132] == b"DICM"
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, "a stored file is world-readable"
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0
    assert list((tmp_path / "storage" / "spool").iterdir()) == [], "the spool kept a file"


def test_malformed_patient_values_never_reach_the_receiver_log(service_factory, tmp_path):
    service = service_factory({"CXRTRIAGE_LOG_LEVEL": "DEBUG"})
    receiver = service.start("receiver", "receiver", "--no-scheduler")
    wait_for(lambda: "receiver listening" in receiver.log(), 60, "the receiver", interval=0.3)
    files = write_study(tmp_path / "malformed", [radiograph(**MALFORMED_SENTINELS)])
    assert storescu(service.port, files).returncode == 0
    wait_for(lambda: "instance stored" in receiver.log(), 30, "the instance to be stored")
    service.stop()
    service.check_logs()
    assert "withheld from logs" in receiver.log(), "pydicom's validation warnings were not exercised"


def test_the_worklist_details_arrive_with_the_instance(tmp_path, db):
    """Recorded when dcmtk's storescu stores the study, before anyone opens it."""
    receiver, port = _receiver(tmp_path, DatabaseIndex(db, "rx-1"))
    try:
        ds = radiograph(StudyDate="20261205", StudyDescription="CHEST PA")
        assert storescu(port, write_study(tmp_path / "send", [ds])).returncode == 0
        with db.session() as session:
            row = session.execute(select(StudyDetails.patient_name, StudyDetails.patient_id,
                                         StudyDetails.accession_number, StudyDetails.study_date,
                                         StudyDetails.study_description)).one()
        assert tuple(row) == (SENTINELS["PatientName"], SENTINELS["PatientID"],
                              SENTINELS["AccessionNumber"], "20261205", "CHEST PA")
    finally:
        receiver.stop()


class _Peer:
    """What Associations reads of a pynetdicom association."""

    class requestor:  # noqa: N801 - pynetdicom's attribute
        ae_title, address, port = "MOD", "127.0.0.1", 104


class ClosesDuringOpen(DatabaseIndex):
    """The real index, where the connection's close event (from pynetdicom's DUL thread) arrives
    while the open is being written: after the association's id was taken, before its row exists."""

    def __init__(self, db: Database, open_fails: bool) -> None:
        super().__init__(db, "rx-1")
        self.associations, self.peer, self.open_fails = Associations(self), _Peer(), open_fails

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        self.associations.record_closed(self.peer)
        if self.open_fails:
            raise ConnectionError("injected failure of opened")
        super().association_opened(association_id, calling_ae, peer)


@pytest.mark.parametrize("open_fails", [False, True])
def test_a_close_that_overtakes_the_open_still_closes_the_record(db, open_fails):
    index = ClosesDuringOpen(db, open_fails)
    associations = index.associations
    assoc_id = associations.id_for(index.peer)
    assert associations.record_opened(index.peer, assoc_id) is not open_fails
    rows = _associations(db)
    assert len(rows) == (0 if open_fails else 1)
    assert all(row.closed_at is not None for row in rows), "a closed association's row stays open"
    assert associations.open_ids() == []
    assert associations.is_recorded(assoc_id), "a closed association is still owed an open record"
