"""Two associations sending the same SOP Instance UID for two patients at the same moment: the
index entry that wins decides which file is stored, and the loser's bytes never reach the
winner's path. The race is made deterministic by holding the winner's transaction at the point
where its file has moved but its entry is not yet committed."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, text

from cxrtriage.db.models import Instance
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import StoredInstance
from cxrtriage.errors import InstanceConflictError
from cxrtriage.worker.receiving import DatabaseIndex
from tests.servers import start_postgres

DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/db.sqlite"
        upgrade(url)
        yield Database(url)
        return
    postgres, url = start_postgres(tmp_path)
    try:
        upgrade(url)
        yield Database(url)
    except BaseException:
        postgres.dump()
        raise
    finally:
        postgres.stop()


def _spooled(store: InstanceStore, content: bytes) -> tuple[Path, str]:
    store.spool.mkdir(parents=True, exist_ok=True)
    path = store.spool / f"cstore-{hashlib.md5(content).hexdigest()}.dcm"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _stored(store: InstanceStore, uids: tuple[str, str, str], digest: str, patient: str,
            size: int) -> StoredInstance:
    path = store.path_for_content(*uids, digest)
    return StoredInstance(f"assoc-{patient}", *uids, DX, "DX", ExplicitVRLittleEndian, str(path), size,
                          digest, patient)


def _waiting(db: Database) -> bool:
    if not db.url.startswith("postgresql"):
        return True  # SQLite: the second writer waits on the file lock or retries; nothing to see
    with db.session() as s:
        return bool(s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")))


def test_the_loser_of_a_sop_instance_uid_race_never_touches_the_winners_file(tmp_path, db):
    store = InstanceStore(tmp_path / "storage")
    index = DatabaseIndex(db, "rx")
    uids = (generate_uid(), generate_uid(), generate_uid())  # same study, series and instance
    first_bytes, second_bytes = b"first patient's pixels" * 100, b"second patient's pixels" * 100
    first_spool, first_digest = _spooled(store, first_bytes)
    second_spool, second_digest = _spooled(store, second_bytes)
    first = _stored(store, uids, first_digest, "PATIENT-A", len(first_bytes))
    second = _stored(store, uids, second_digest, "PATIENT-B", len(second_bytes))
    moved, release = threading.Event(), threading.Event()
    second_placed: list[bool] = []
    outcome: dict[str, object] = {}

    def place_first() -> None:
        store.move_into(first_spool, Path(first.path))
        moved.set()
        assert release.wait(30)  # hold the transaction open: the point of conflict

    def run(name: str, stored: StoredInstance, place) -> None:  # type: ignore[no-untyped-def]
        try:
            index.instance_stored(stored, place)
            outcome[name] = "stored"
        except InstanceConflictError:
            outcome[name] = "conflict"

    winner = threading.Thread(target=run, args=("first", first, place_first))
    winner.start()
    assert moved.wait(30)
    loser = threading.Thread(target=run, args=("second", second, lambda: second_placed.append(True)))
    loser.start()
    deadline = time.monotonic() + 30
    while not _waiting(db):
        assert time.monotonic() < deadline, "the second entry never reached the first one's lock"
        time.sleep(0.05)
    time.sleep(0.3)
    assert not second_placed, "the second file moved before the first entry was decided"
    release.set()
    winner.join(30)
    loser.join(60)
    assert outcome == {"first": "stored", "second": "conflict"}
    assert not second_placed and second_spool.exists(), "the loser's bytes left the spool"
    assert Path(first.path).read_bytes() == first_bytes
    assert not Path(second.path).exists()
    with db.session() as s:
        [(patient, path, digest)] = s.execute(
            select(Instance.patient_id, Instance.path, Instance.sha256)).all()
    assert (patient, path, digest) == ("PATIENT-A", first.path, first_digest)


def test_a_failed_move_leaves_no_index_entry(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    store = InstanceStore(tmp_path / "storage")
    index = DatabaseIndex(db, "rx")
    spooled, digest = _spooled(store, b"pixels")
    stored = _stored(store, (generate_uid(), generate_uid(), generate_uid()), digest, "P", 6)

    def vanished_volume() -> None:
        raise OSError("the storage volume went away")

    with pytest.raises(OSError):
        index.instance_stored(stored, vanished_volume)
    with db.session() as s:
        assert s.scalar(select(Instance.id)) is None, "an entry was committed without its file"
    assert spooled.exists()
