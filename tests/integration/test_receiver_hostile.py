"""Hostile senders and slow peers cost only themselves: each test attacks a real receiver over
loopback while an honest modality sends beside it, and counts what the attack cost."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from cxrtriage.db.models import Instance, Rejection
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.receiver import (
    LIMIT_EXCEEDED,
    OUT_OF_RESOURCES,
    SUCCESS,
    AccessPolicy,
    Receiver,
    ReceiverLimits,
)
from cxrtriage.dicom.storage import InstanceStore, Watermark
from cxrtriage.dicom.tls import client_context, server_context
from cxrtriage.worker.receiving import DatabaseIndex
from tests.factory import radiograph, write_study
from tests.hostile import DX, closed_by_peer, connect_from, deflate_bomb, oversized_file, pdu_header
from tests.peers import echoscu, encode_dataset, storescu
from tests.servers import LOOPBACK, free_port, wait_for
from tests.tls_certs import make_ca, make_cert

MiB = 1024 * 1024


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    return Database(url)


@pytest.fixture
def receive(tmp_path: Path, db: Database):  # type: ignore[no-untyped-def]
    started: list[Receiver] = []

    def start(limits: ReceiverLimits | None = None, access: AccessPolicy | None = None,
              watermark: Watermark | None = None) -> tuple[Receiver, int]:
        port = free_port()
        receiver = Receiver("CXRTRIAGE", InstanceStore(tmp_path / "storage"), DatabaseIndex(db, "rx"),
                            limits or ReceiverLimits(heartbeat_seconds=3600), access, watermark=watermark)
        receiver.start(LOOPBACK, port)
        started.append(receiver)
        return receiver, port

    start.db = db  # type: ignore[attr-defined]
    yield start
    for receiver in started:
        receiver.stop()


def _send_file(port: int, path: Path, syntax: str, called: str = "CXRTRIAGE") -> tuple[int | None, bool]:
    """C-STORE a file's bytes as they are stored (pynetdicom streams them undecoded). The status,
    or None when the association was aborted; and whether it was aborted."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(DX, [syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    aborted = assoc.is_aborted
    if assoc.is_established:
        assoc.release()
    return (int(status.Status) if "Status" in status else None), aborted


def _store_dataset(port: int, ds) -> int:  # type: ignore[no-untyped-def]
    """C-STORE one data set as an honest modality would; the status it got."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    assert assoc.is_established
    status = int(assoc.send_c_store(ds).Status)
    assoc.release()
    return status


def _rejections(db: Database) -> list[tuple[int, str]]:
    with db.session() as session:
        return [(r.status, r.reason) for r in session.scalars(select(Rejection))]


def _spool_files(tmp_path: Path) -> list[Path]:
    spool = tmp_path / "storage" / "spool"
    return [p for p in spool.iterdir()] if spool.exists() else []


def _honest_store(port: int, folder: Path) -> bool:
    return storescu(port, write_study(folder, [radiograph()])).returncode == 0


def test_a_deflate_bomb_is_refused_permanently_before_it_is_inflated(tmp_path, db, receive):
    bomb = tmp_path / "bomb.dcm"
    deflate_bomb(bomb)  # 805 MB of pixels in about 3.5 MB
    _, port = receive(ReceiverLimits(max_instance_bytes=64 * MiB, heartbeat_seconds=3600))
    status, aborted = _send_file(port, bomb, DeflatedExplicitVRLittleEndian)
    assert (status, aborted) == (LIMIT_EXCEEDED, False)
    [(code, reason)] = _rejections(db)
    assert code == LIMIT_EXCEEDED and "inflates past the limit" in reason
    assert _spool_files(tmp_path) == [] and not list((tmp_path / "storage").rglob("*.dcm"))
    assert _honest_store(port, tmp_path / "honest")


def test_a_data_set_over_the_limit_is_refused_while_it_arrives(tmp_path, db, receive):
    _, port = receive(ReceiverLimits(max_instance_bytes=4 * MiB, heartbeat_seconds=3600))
    big = tmp_path / "big.dcm"
    oversized_file(big, 6 * MiB)
    peak = _watch_spool(tmp_path)
    status, aborted = _send_file(port, big, ExplicitVRLittleEndian)
    assert (status, aborted) == (LIMIT_EXCEEDED, False)
    assert peak() <= 4 * MiB + 512 * 1024, "the spool took more than the limit"
    [(code, reason)] = _rejections(db)
    assert code == LIMIT_EXCEEDED and "CXRTRIAGE_MAX_INSTANCE_BYTES" in reason
    assert _spool_files(tmp_path) == []
    with db.session() as session:
        assert session.scalar(select(Instance.id)) is None


@pytest.mark.parametrize("spare, expected", [(0, SUCCESS), (-1, LIMIT_EXCEEDED)])
def test_the_instance_limit_admits_its_own_size_and_refuses_one_byte_more(tmp_path, receive, spare,
                                                                           expected):
    ds = radiograph()
    size = len(encode_dataset(ds))
    _, port = receive(ReceiverLimits(max_instance_bytes=size + spare, heartbeat_seconds=3600))
    status = _store_dataset(port, ds)
    assert status == expected


def test_a_data_set_streamed_far_past_the_limit_is_aborted(tmp_path, db, receive):
    _, port = receive(ReceiverLimits(max_instance_bytes=2 * MiB, heartbeat_seconds=3600))
    huge = tmp_path / "huge.dcm"
    oversized_file(huge, 12 * MiB)
    status, _ = _send_file(port, huge, ExplicitVRLittleEndian)
    assert status is None, "the sender got an answer instead of an abort"
    wait_for(lambda: _spool_files(tmp_path) == [], 10, "the aborted transfer to leave the spool")
    assert _honest_store(port, tmp_path / "honest")


def test_the_watermark_is_checked_while_a_data_set_arrives(tmp_path, db, receive):
    full = Watermark(min_free_bytes=1 << 62)  # the volume counts as full throughout
    _, port = receive(watermark=full)
    big = tmp_path / "big.dcm"
    oversized_file(big, 40 * MiB)
    peak = _watch_spool(tmp_path)
    status, aborted = _send_file(port, big, ExplicitVRLittleEndian)
    assert (status, aborted) == (OUT_OF_RESOURCES, False)
    assert peak() <= 9 * MiB, "the spool kept filling past the watermark"
    assert all(code == OUT_OF_RESOURCES and "storage volume is full" in r for code, r in _rejections(db))


def _watch_spool(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Sample the spool's size until the returned function is called; it returns the peak."""
    spool, peak, stop = tmp_path / "storage" / "spool", [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                size = sum(p.stat().st_size for p in spool.iterdir())
            except (FileNotFoundError, OSError):
                size = 0
            peak[0] = max(peak[0], size)
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def result() -> int:
        stop.set()
        thread.join()
        return peak[0]

    return result


@pytest.mark.parametrize("pdu_type, length", [(0x01, 2**31), (0x01, 4 * MiB), (0x07, 2**20)])
def test_a_pdu_declaring_more_than_its_cap_is_cut_off_at_its_header(receive, pdu_type, length):
    _, port = receive()
    sock = connect_from("127.0.0.2", port)
    sock.sendall(pdu_header(pdu_type, length) + b"\0" * 4096)
    assert closed_by_peer(sock, within=5) is not None, "the receiver kept reading the PDU"
    assert echoscu(port)


def test_a_p_data_pdu_over_the_negotiated_maximum_aborts_the_association(receive):
    _, port = receive(ReceiverLimits(max_pdu_size=16384, heartbeat_seconds=3600))
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(pdu_header(0x04, 64 * MiB) + b"\0" * 65536)
    wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), 10, "the abort")
    assert echoscu(port)


def test_trickling_peers_hold_no_slot_a_modality_needs(receive):
    limits = ReceiverLimits(max_associations=10, negotiation_timeout=2, heartbeat_seconds=3600)
    _, port = receive(limits)
    # Fourteen half-open connections (more than max_associations), from four addresses, each
    # sending a plausible A-ASSOCIATE-RQ header and then one byte a second.
    hostile = [connect_from(f"127.0.0.{2 + i % 4}", port) for i in range(14)]
    for sock in hostile:
        sock.sendall(pdu_header(0x01, 300) + b"\x00")
    started = time.monotonic()
    assert echoscu(port), "half-open connections locked out a modality"
    for _ in range(3):
        for sock in hostile:
            try:
                sock.sendall(b"\x00")
            except OSError:
                pass
        time.sleep(0.5)
    closed = [closed_by_peer(sock, within=6) for sock in hostile]
    assert all(c is not None for c in closed), "a trickling connection outlived the negotiation deadline"
    assert time.monotonic() - started < 10
    assert echoscu(port)


def test_one_address_cannot_take_every_negotiating_slot(receive):
    limits = ReceiverLimits(max_pending_per_peer=3, negotiation_timeout=30, heartbeat_seconds=3600)
    _, port = receive(limits)
    held = [connect_from("127.0.0.2", port) for _ in range(3)]
    for sock in held:
        sock.sendall(pdu_header(0x01, 300))
    time.sleep(0.3)
    extra = connect_from("127.0.0.2", port)
    assert closed_by_peer(extra, within=5) is not None, "a fourth connection from one address got in"
    assert echoscu(port), "another address was locked out"
    for sock in held:
        sock.close()


def test_connections_closed_before_their_request_leave_nothing_behind(receive):
    # pynetdicom keeps an acceptor's thread waiting acse_timeout (30 s) for an A-ASSOCIATE-RQ
    # even after its connection is gone, and counts those threads against its own cap
    # (10 x our slots: 30 here). Connecting and closing, each time within every limit, from
    # eight addresses, locked every modality out until they expired.
    limits = ReceiverLimits(max_associations=1, max_pending_connections=2, heartbeat_seconds=3600)
    receiver, port = receive(limits)
    for i in range(45):
        connect_from(f"127.0.0.{2 + i % 8}", port).close()
        time.sleep(0.02)  # the receiver sees each close, so each one was admitted
    assert echoscu(port), "closed connections locked out a modality"
    wait_for(lambda: not receiver.ae.active_associations, 3, "the closed connections' threads to end")


def test_one_address_cannot_hold_every_association_slot(receive):
    limits = ReceiverLimits(max_associations=4, max_associations_per_peer=2, heartbeat_seconds=3600)
    _, port = receive(limits)
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)

    def associate():  # type: ignore[no-untyped-def]
        return ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE", bind_address=("127.0.0.2", 0))

    held = [associate() for _ in range(2)]
    assert all(assoc.is_established for assoc in held)
    third = associate()
    rejection = third.acceptor.primitive
    assert third.is_rejected and (rejection.result, rejection.result_source) == (0x02, 0x03), "a third got in"
    assert echoscu(port), "another address was locked out"
    for assoc in held:
        assoc.release()
    assert associate().is_established, "the address's slots were not given back"


def test_the_called_ae_title_must_be_ours_or_an_alias(receive):
    _, port = receive(access=AccessPolicy(called_ae_aliases=("TRIAGE2",)))
    assert echoscu(port, called="CXRTRIAGE")
    assert echoscu(port, called="TRIAGE2")
    assert not echoscu(port, called="ANY-SCP"), "a wrong called AE title was accepted"


def test_an_error_escaping_the_handler_is_a_temporary_failure(tmp_path, receive):
    class VanishingVolume(Watermark):
        def refusal(self, path: Path) -> str:
            raise FileNotFoundError("storage volume unmounted")

    _, port = receive(watermark=VanishingVolume())
    ds = radiograph()
    status = _store_dataset(port, ds)
    assert status == OUT_OF_RESOURCES  # retryable; pynetdicom's own answer would be 0xC211
    wait_for(lambda: _spool_files(tmp_path) == [], 5, "the spool to be empty")


def test_the_spool_cleaner_spares_a_slow_live_transfer(tmp_path, receive):
    receiver, _ = receive()
    spool = tmp_path / "storage" / "spool"
    live, dead = spool / "cstore-live.dcm", spool / "cstore-dead.dcm"
    for path in (live, dead):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    receiver._spooling[str(live)] = 1  # what pynetdicom's file factory records for a live transfer
    receiver.beat()
    assert live.exists() and not dead.exists()


def test_an_honest_study_goes_through_beside_a_deflate_bomb_and_memory_stays_bounded(
        tmp_path, service_factory):
    """The receiver as its own process: its peak resident memory, with the bomb sent beside an
    honest modality's study."""
    service = service_factory({})
    proc = service.start("receiver", "receiver", "--no-scheduler")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    before = _peak_rss(proc.proc.pid)
    bomb = tmp_path / "bomb.dcm"
    deflate_bomb(bomb, 16383, 16383)  # 3.2 GB of pixels, as the issue measured
    outcome: list[tuple[int | None, bool]] = []
    attack = threading.Thread(target=lambda: outcome.append(
        _send_file(service.port, bomb, DeflatedExplicitVRLittleEndian)))
    started = time.monotonic()
    attack.start()
    assert _honest_store(service.port, tmp_path / "honest"), "the honest study was refused"
    attack.join(timeout=120)
    held = time.monotonic() - started
    assert outcome == [(LIMIT_EXCEEDED, False)]
    grew = _peak_rss(proc.proc.pid) - before
    assert grew < 150 * MiB, f"the receiver's peak memory grew by {grew // MiB} MiB"
    assert held < 60
    service.check_logs()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")



def test_a_certificate_may_claim_only_its_own_calling_ae_title(tmp_path, receive):
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    server_cert, server_key = make_cert(pki, "ca", "receiver")
    modality_cert, modality_key = make_cert(pki, "ca", "modality1")
    tls = client_context(modality_cert, modality_key, ca)
    port = free_port()
    receiver = Receiver("CXRTRIAGE", InstanceStore(tmp_path / "storage"), DatabaseIndex(receive.db, "rx"),
                        ReceiverLimits(heartbeat_seconds=3600),
                        AccessPolicy(tls_identities={"MODALITY1": ("modality1",), "CT2": ("ct2",)}),
                        server_context(server_cert, server_key, ca))
    receiver.start(LOOPBACK, port)
    try:
        assert _echo_tls(port, "MODALITY1", tls)
        assert not _echo_tls(port, "CT2", tls), "a certificate claimed another modality's AE title"
        assert not _echo_tls(port, "UNLISTED", tls), "an AE title without an identity got in"
    finally:
        receiver.stop()


def _echo_tls(port: int, calling: str, tls) -> bool:  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE", tls_args=(tls, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0
