"""Only who belongs gets in: calling AE and peer allow-lists, idle clients dropped, DICOM over TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxrtriage.dicom.tls import client_context, server_context
from tests.peers import echoscu
from tests.servers import LOOPBACK, binary, port_open, wait_for
from tests.tls_certs import make_ca, make_cert


def _echo_from(port: int, calling: str, bind: str = LOOPBACK, tls: ssl.SSLContext | None = None) -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE", bind_address=(bind, 0),
                         tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def test_calling_ae_and_peer_allow_lists(service_factory):
    service = service_factory({"CXRTRIAGE_ALLOWED_CALLING_AES": "MODALITY1,ECHOSCU",
                               "CXRTRIAGE_ALLOWED_PEERS": "127.0.0.1/32"})
    receiver = service.start("receiver", "receiver")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    assert _echo_from(service.port, "MODALITY1")
    assert not _echo_from(service.port, "INTRUDER"), "an unknown calling AE got in"
    assert not _echo_from(service.port, "MODALITY1", bind="127.0.0.2"), "an unknown peer got in"
    wait_for(lambda: "association rejected" in receiver.log(), 10, "the rejection to be logged")
    assert "INTRUDER" in receiver.log() and "peer address not allowed" in receiver.log()
    service.check_logs()


def test_idle_client_is_dropped_and_blocks_no_one(service_factory):
    service = service_factory({"CXRTRIAGE_ACSE_TIMEOUT": "2", "CXRTRIAGE_NETWORK_TIMEOUT": "2"})
    service.start("receiver", "receiver")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    idle = socket.create_connection((LOOPBACK, service.port))
    idle.settimeout(15)
    start = time.monotonic()
    assert echoscu(service.port), "an idle client blocked another association"
    assert idle.recv(1024) == b"", "the idle connection was not closed"  # blocks until closed
    assert time.monotonic() - start < 10
    idle.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "pki"
    ca = make_ca(folder, "hospital-ca")
    make_ca(folder, "other-ca")
    server = make_cert(folder, "hospital-ca", "cxrtriage")
    client = make_cert(folder, "hospital-ca", "modality")
    rogue = make_cert(folder, "other-ca", "rogue")
    return {"ca": ca, "server": server[0], "server_key": server[1], "client": client[0],
            "client_key": client[1], "rogue": rogue[0], "rogue_key": rogue[1]}


def test_tls_receiver_admits_only_clients_of_its_ca(service_factory, pki):
    service = service_factory({"CXRTRIAGE_TLS_CERTIFICATE": str(pki["server"]),
                               "CXRTRIAGE_TLS_KEY": str(pki["server_key"]),
                               "CXRTRIAGE_TLS_CA": str(pki["ca"])})
    service.start("receiver", "receiver")
    wait_for(lambda: port_open(service.port), 60, "receiver port", interval=0.5)
    good = client_context(pki["client"], pki["client_key"], pki["ca"])
    assert wait_for(lambda: _echo_from(service.port, "MODALITY", tls=good), 30, "TLS echo")
    dcmtk = subprocess.run([binary("echoscu"), "-aec", "CXRTRIAGE", "+tls", str(pki["client_key"]),
                            str(pki["client"]), "+cf", str(pki["ca"]), LOOPBACK, str(service.port)],
                           capture_output=True, text=True, timeout=30)
    assert dcmtk.returncode == 0, dcmtk.stderr
    assert not echoscu(service.port), "a client without TLS got in"
    no_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    assert not _echo_from(service.port, "MODALITY", tls=no_cert), "a client without a certificate got in"
    rogue = client_context(pki["rogue"], pki["rogue_key"], pki["ca"])
    assert not _echo_from(service.port, "MODALITY", tls=rogue), "a certificate of another CA got in"


def test_idle_tls_connection_blocks_no_one(service_factory, pki):
    """One TCP connection that never starts its handshake must not stop a valid client: the
    handshake runs in the connection's own thread, with a timeout."""
    service = service_factory({"CXRTRIAGE_TLS_CERTIFICATE": str(pki["server"]),
                               "CXRTRIAGE_TLS_KEY": str(pki["server_key"]),
                               "CXRTRIAGE_TLS_CA": str(pki["ca"]), "CXRTRIAGE_ACSE_TIMEOUT": "20"})
    service.start("receiver", "receiver")
    good = client_context(pki["client"], pki["client_key"], pki["ca"])
    wait_for(lambda: _echo_from(service.port, "MODALITY", tls=good), 60, "TLS echo", interval=0.5)
    idle = [socket.create_connection((LOOPBACK, service.port)) for _ in range(3)]
    try:
        start = time.monotonic()
        assert _echo_from(service.port, "MODALITY", tls=good), "an idle TLS connection blocked a client"
        assert time.monotonic() - start < 5
    finally:
        for sock in idle:
            sock.close()


def test_idle_timeout_and_association_limit_hold_with_tls(service_factory, pki):
    service = service_factory({"CXRTRIAGE_TLS_CERTIFICATE": str(pki["server"]),
                               "CXRTRIAGE_TLS_KEY": str(pki["server_key"]),
                               "CXRTRIAGE_TLS_CA": str(pki["ca"]), "CXRTRIAGE_ACSE_TIMEOUT": "2",
                               "CXRTRIAGE_NETWORK_TIMEOUT": "2", "CXRTRIAGE_MAX_ASSOCIATIONS": "1"})
    service.start("receiver", "receiver")
    good = client_context(pki["client"], pki["client_key"], pki["ca"])
    wait_for(lambda: _echo_from(service.port, "MODALITY", tls=good), 60, "TLS echo", interval=0.5)
    # A client that completes its handshake, then sends nothing, is dropped.
    idle = good.wrap_socket(socket.create_connection((LOOPBACK, service.port)), server_hostname=LOOPBACK)
    idle.settimeout(15)
    start = time.monotonic()
    assert idle.recv(1024) == b"", "the idle TLS client was not dropped"
    assert time.monotonic() - start < 10
    idle.close()
    # With one association held open, a second is refused.
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)

    def hold() -> object:  # the dropped client's association may take a moment to end
        assoc = ae.associate(LOOPBACK, service.port, ae_title="CXRTRIAGE", tls_args=(good, LOOPBACK))
        return assoc if assoc.is_established else None

    held = wait_for(hold, 20, "an association to hold open", interval=0.5)
    try:
        assert not _echo_from(service.port, "MODALITY", tls=good), "the association limit did not hold"
    finally:
        held.release()  # type: ignore[attr-defined]


def test_production_refuses_to_listen_without_tls_unless_told(service_factory, tmp_path):
    env = {"CXRTRIAGE_ENVIRONMENT": "production",
           "CXRTRIAGE_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x",
           "CXRTRIAGE_BROKER_URL": "redis://127.0.0.1:1/0", "CXRTRIAGE_ALLOWED_CALLING_AES": "MOD",
           "CXRTRIAGE_ALLOWED_PEERS": "127.0.0.1/32"}
    result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", "receiver"], cwd=tmp_path,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CXRTRIAGE_TLS_REQUIRED=false" in result.stderr


def test_sr_goes_out_over_tls(tmp_path, pki):
    from cxrtriage.dicom.sender import send_files
    from tests.factory import radiograph

    received = []
    scp = AE(ae_title="PACS")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.1.1", [ExplicitVRLittleEndian])
    handler = [(evt.EVT_C_STORE, lambda event: received.append(event.dataset.SOPInstanceUID) or 0)]
    context = server_context(pki["server"], pki["server_key"], pki["ca"])
    server = scp.start_server((LOOPBACK, 0), block=False, evt_handlers=handler, ssl_context=context)
    try:
        port = server.server_address[1]
        ds = radiograph()
        path = tmp_path / "x.dcm"
        ds.save_as(path, enforce_file_format=True)
        [delivery] = send_files([path], "PACS", LOOPBACK, port, "CXRTRIAGE",
                                ssl_context=client_context(pki["client"], pki["client_key"], pki["ca"]))
        assert delivery.error == "" and delivery.status == 0x0000
        assert received == [ds.SOPInstanceUID]
    finally:
        server.shutdown()


def test_undecodable_transfer_syntax_is_refused_at_negotiation(service_factory):
    service = service_factory({})
    service.start("receiver", "receiver")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    ae = AE(ae_title="MODALITY")
    mpeg2 = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no installed decoder
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", [mpeg2])
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, service.port, ae_title="CXRTRIAGE")
    try:
        assert assoc.is_established
        accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
        assert "1.2.840.10008.5.1.4.1.1.1.1" not in accepted, "an undecodable syntax was accepted"
    finally:
        assoc.release()


def test_htj2k_is_taken_as_sent_and_stored(service_factory, tmp_path):
    """A newer modality offers High-Throughput JPEG 2000 with an uncompressed fallback in one
    context: the receiver takes HTJ2K, so the file arrives as the modality holds it."""
    from pydicom.uid import HTJ2KLossless

    from tests.factory import htj2k_radiograph

    service = service_factory({})
    service.start("receiver", "receiver")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    ds, _ = htj2k_radiograph(tmp_path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(str(ds.SOPClassUID), [HTJ2KLossless, ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, service.port, ae_title="CXRTRIAGE")
    try:
        assert assoc.is_established
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax[0] == HTJ2KLossless
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    stored = [p for p in (service.workdir / "var" / "storage").rglob("*.dcm") if "spool" not in p.parts]
    assert [str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in stored] == [HTJ2KLossless]
