"""Fuzzing the live receiver over loopback: an honest association's bytes, recorded once, are
mutated (flipped bytes, changed lengths, truncation, garbage) and replayed, for a bounded count
and time. Nothing crashes or hangs the receiver, and nothing indexed is missing from disk."""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from cxrtriage.db.models import Association, Instance
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.receiver import Receiver, ReceiverLimits
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.worker.receiving import DatabaseIndex
from tests.factory import radiograph
from tests.peers import echoscu
from tests.servers import LOOPBACK, free_port, wait_for

ROUNDS, BUDGET_SECONDS = 120, 60.0


def _record(port: int) -> list[bytes]:
    """The PDUs an honest pynetdicom sender writes for one C-STORE, captured by a relay."""
    listener = socket.create_server((LOOPBACK, 0))
    relay_port = listener.getsockname()[1]
    sent = bytearray()

    def relay() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection((LOOPBACK, port))

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            while data := src.recv(65536):
                if record:
                    sent.extend(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        back.start()
        pump(client, upstream, True)
        back.join(10)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    ds = radiograph()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, relay_port, ae_title="CXRTRIAGE")
    assert assoc.is_established and assoc.send_c_store(ds).Status == 0
    assoc.release()
    thread.join(10)
    pdus, offset = [], 0
    while offset + 6 <= len(sent):
        (length,) = struct.unpack_from(">L", sent, offset + 2)
        pdus.append(bytes(sent[offset:offset + 6 + length]))
        offset += 6 + length
    return pdus


def _mutate(pdu: bytes, rng: random.Random) -> bytes:
    out = bytearray(pdu)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # lie about the PDU length
        struct.pack_into(">L", out, 2, rng.choice([0, 1, len(out), 2**31, 2**32 - 1, rng.randrange(2**20)]))
    elif kind == 2:  # truncate
        del out[rng.randrange(len(out)):]
    elif kind == 3:  # insert garbage
        position = rng.randrange(len(out))
        out[position:position] = rng.randbytes(rng.randint(1, 64))
    else:  # change the PDU type
        out[0] = rng.randrange(256)
    return bytes(out)


def _replay(port: int, pdus: list[bytes]) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
        try:
            sock.sendall(pdus[0])
            sock.recv(65536)  # the association's answer, before any P-DATA
            for pdu in pdus[1:]:
                sock.sendall(pdu)
            sock.settimeout(1.5)
            while sock.recv(65536):
                pass
        except OSError:  # reset, timed out or refused: all fine, as long as the receiver lives
            pass


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_associations_never_crash_the_receiver_or_lose_what_it_indexed(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    port = free_port()
    receiver = Receiver("CXRTRIAGE", InstanceStore(tmp_path / "storage"), DatabaseIndex(db, "rx"),
                        ReceiverLimits(negotiation_timeout=2, pdu_timeout=2, heartbeat_seconds=3600))
    receiver.start(LOOPBACK, port)
    try:
        honest = _record(port)
        rng, started, rounds = random.Random(17), time.monotonic(), 0
        while rounds < ROUNDS and time.monotonic() - started < BUDGET_SECONDS:
            pdus = list(honest)
            for _ in range(rng.randint(1, 2)):
                index = rng.randrange(len(pdus))
                pdus[index] = _mutate(pdus[index], rng)
            _replay(port, pdus)
            rounds += 1
        assert rounds >= 20, "the fuzz loop did too little to mean anything"
        assert echoscu(port), "the receiver stopped answering"
        with db.session() as session:
            indexed = session.execute(select(Instance.path, Instance.sha256)).all()
        assert indexed, "not even the honest recording was stored"
        for path, digest in indexed:
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, "an indexed file is lost"
        assert threading.active_count() < 40, "associations' threads are piling up"

        def none_open() -> bool:
            receiver.beat()  # associations pynetdicom ended without a close event are closed here
            with db.session() as session:
                return session.scalar(select(Association.id).where(Association.closed_at.is_(None))) is None

        # The last replay's association may still be alive (inside its 2 s PDU deadline) and rightly
        # open; once it has ended, a beat must close every record.
        wait_for(none_open, 15, "a dead association still holds its studies", interval=1.0)
    finally:
        receiver.stop()
