"""Faults with real processes: Redis, PostgreSQL, Orthanc as the PACS, `cxrtriage receiver` and
its workers. Each scenario kills, restarts or starves one of them, then counts:
  1. every study sent has exactly one current SR at Orthanc (superseded SRs are history);
  2. every instance that got a success status is in storage and in the database.
The servers are shared by the scenarios, which run in order and leave the stack healthy.
Fault timings are shortened by configuration (see ENV)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cxrtriage.db.models import Rejection, SrExportAttempt
from cxrtriage.dicom.tls import client_context
from tests.conftest import Service, assert_no_patient_data
from tests.factory import MALFORMED_SENTINELS, radiograph, random_package
from tests.faults.stack import (
    SUCCESS,
    Stack,
    check_acknowledged_are_kept,
    check_one_current_sr_each,
    restart,
    send_until_stored,
    store_each,
)
from tests.servers import LOOPBACK, Orthanc, port_open, start_postgres, start_redis, wait_for
from tests.tls_certs import make_ca, make_cert

pytestmark = pytest.mark.slow
PG_USER = "postgres" if os.geteuid() == 0 else None  # as tests/servers.py starts it
ENV = {
    "CXRTRIAGE_STUDY_QUIET_SECONDS": "1", "CXRTRIAGE_SWEEP_INTERVAL_SECONDS": "0.2",
    "CXRTRIAGE_PROCESSING_LEASE_SECONDS": "6",  # a dead worker's study is redone after 6 s
    "CXRTRIAGE_SR_RETRY_BASE_SECONDS": "0.2", "CXRTRIAGE_SR_RETRY_MAX_INTERVAL_SECONDS": "1",
    "CXRTRIAGE_SR_CONNECT_TIMEOUT_SECONDS": "1", "CXRTRIAGE_SR_SEND_DEADLINE_SECONDS": "1.5",
    "CXRTRIAGE_ASSOCIATION_LIVENESS_SECONDS": "4", "CXRTRIAGE_HEATMAPS": "false",
    "CXRTRIAGE_LOG_LEVEL": "INFO",
}


def _study(images: int = 1, **attrs: object) -> list:
    uid = generate_uid()
    series = generate_uid()
    return [radiograph(uid, SeriesInstanceUID=series, InstanceNumber=n, **attrs)  # type: ignore[arg-type]
            for n in range(1, images + 1)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("faults")
    # A heavier random model, so that a study is processing long enough to be interrupted.
    package = random_package(work / "pkg", architecture="resnet50", input_size=256)
    redis, redis_port = start_redis(work)
    postgres, db_url = start_postgres(work)
    service = Service(work, {**ENV, "CXRTRIAGE_DATABASE_URL": db_url, "CXRTRIAGE_MODEL": str(package),
                             "CXRTRIAGE_BROKER_URL": f"redis://{LOOPBACK}:{redis_port}/0",
                             "CXRTRIAGE_STORAGE_DIR": str(work / "storage")})
    orthanc = Orthanc(work / "orthanc", work, "CXRTRIAGE", service.port)
    service.env["CXRTRIAGE_SR_DESTINATION"] = f"{orthanc.ae_title}@{LOOPBACK}:{orthanc.dicom_port}"
    stack = Stack(work, service, orthanc, redis, redis_port, postgres, db_url)
    failed_before = request.session.testsfailed
    try:
        service.cli("db", "upgrade")
        stack.start_receiver()
        stack.start_worker()
        stack.start_exporter()
        yield stack
    finally:
        if request.session.testsfailed > failed_before:
            for proc in stack.procs():
                proc.dump()
        stack.db.engine.dispose()
        for proc in reversed(stack.procs()):
            proc.stop(signal.SIGINT if proc.name == "postgres" else signal.SIGTERM)  # fast shutdown
        for proc in stack.procs() + service.procs:
            if proc.name.startswith(("receiver", "worker", "exporter")):
                assert_no_patient_data(proc.log(), f"the {proc.name} log")


@pytest.fixture(autouse=True)
def counts(stack: Stack, request: pytest.FixtureRequest) -> Iterator[None]:
    """Each scenario's counts, one JSON line in the stack's folder (faults*/counts.jsonl)."""
    stack.tally = {}
    start = time.monotonic()
    yield
    line = {"scenario": request.node.name, "seconds": round(time.monotonic() - start, 1), **stack.tally}
    with open(stack.work / "counts.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


def test_worker_sigkilled_mid_study_with_redis(stack: Stack) -> None:
    datasets = _study(images=8)
    uid = str(datasets[0].StudyInstanceUID)
    acked = send_until_stored(stack.service.port, datasets)
    wait_for(lambda: stack.study_state(uid) == "processing", 60, "the study to be processing", 0.02)
    assert stack.worker is not None
    stack.worker.stop(signal.SIGKILL)
    assert stack.study_state(uid) == "processing", "the study finished before the worker was killed"
    stack.start_worker()
    check_one_current_sr_each(stack, [uid])
    check_acknowledged_are_kept(stack, acked)


def test_redis_restart_loses_queued_studies(stack: Stack) -> None:
    assert stack.worker is not None
    stack.worker.stop()  # nothing consumes: the studies wait in Redis
    studies = [_study() for _ in range(3)]
    acked: set[str] = set()
    for datasets in studies:
        acked |= send_until_stored(stack.service.port, datasets)
    uids = [str(d[0].StudyInstanceUID) for d in studies]
    wait_for(lambda: all(stack.study_state(u) == "queued" for u in uids), 60, "studies queued")
    stack.redis = restart(stack.redis, stack.work, signal.SIGKILL)  # no persistence: queue is gone
    wait_for(lambda: port_open(stack.redis_port), 20, "redis again")
    stack.start_worker()
    check_one_current_sr_each(stack, uids)
    check_acknowledged_are_kept(stack, acked)


def test_postgres_restart_during_ingest(stack: Stack) -> None:
    studies = [_study(images=3) for _ in range(3)]
    datasets = [ds for study in studies for ds in study]
    acked: set[str] = set()
    outcome: dict[str, object] = {}

    def modality() -> None:
        try:
            outcome["acked"] = send_until_stored(stack.service.port, datasets, timeout=180)
        except Exception as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=modality)
    sender.start()
    time.sleep(0.2)  # mid-ingest
    stack.postgres = restart(stack.postgres, stack.work, signal.SIGINT, PG_USER, down_seconds=2.0)
    sender.join(timeout=200)
    assert "error" not in outcome, outcome.get("error")
    log = stack.receiver.log()  # type: ignore[union-attr]
    assert "indexing or storing failed" in log or "could not record" in log, "the outage missed the ingest"
    acked = outcome["acked"]  # type: ignore[assignment]
    check_one_current_sr_each(stack, [str(s[0].StudyInstanceUID) for s in studies])
    check_acknowledged_are_kept(stack, acked)
    with stack.db.session() as session:
        refused = session.scalar(select(func.count()).select_from(Rejection))
    assert refused == 0, "a database outage is not a reason to quarantine an instance"


def test_postgres_restart_during_the_workers_final_transaction(stack: Stack) -> None:
    datasets = _study(images=6)
    uid = str(datasets[0].StudyInstanceUID)
    acked = send_until_stored(stack.service.port, datasets)
    wait_for(lambda: stack.study_state(uid) == "processing", 60, "the study to be processing", 0.02)
    # Down before inference ends, up after it: the worker's result transaction meets no database.
    stack.postgres = restart(stack.postgres, stack.work, signal.SIGINT, PG_USER, down_seconds=6.0)
    check_one_current_sr_each(stack, [uid], timeout=180)
    assert '"could not report the failure; the study will be redone"' in stack.worker.log(), \
        "the outage missed the worker's final transaction"  # type: ignore[union-attr]
    check_acknowledged_are_kept(stack, acked)


def test_receiver_killed_mid_association(stack: Stack) -> None:
    datasets = _study(images=8)
    uid = str(datasets[0].StudyInstanceUID)
    assert stack.receiver is not None
    receiver = stack.receiver

    def kill_after_three(n: int) -> bool:
        if n == 3:
            receiver.stop(signal.SIGKILL)
        return n >= 3  # the sender sees its association break

    statuses = store_each(stack.service.port, datasets, after_each=kill_after_three)
    acked = {u for u, status in statuses.items() if status == SUCCESS}
    assert len(acked) >= 3 and len(acked) < len(datasets), "the receiver did not die mid-association"
    stack.tally["acknowledged_before_kill"] = len(acked)
    stack.start_receiver()  # same receiver id: it closes its predecessor's association rows
    acked |= send_until_stored(stack.service.port, datasets)
    check_one_current_sr_each(stack, [uid])
    check_acknowledged_are_kept(stack, acked)


def _attempts(stack: Stack, study_uid: str) -> int:
    rows = stack.export_rows(study_uid)
    with stack.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(SrExportAttempt).where(
            SrExportAttempt.export_id.in_([r.id for r in rows]))) or 0)


@pytest.mark.parametrize("outage", ["refusing", "silent"])
def test_pacs_down_for_more_than_six_attempts(stack: Stack, outage: str) -> None:
    stack.stop_pacs()
    silent = None
    if outage == "silent":  # a listener that accepts nothing and never answers
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind((LOOPBACK, stack.orthanc.dicom_port))
        silent.listen(0)
    try:
        first = _study()
        uid = str(first[0].StudyInstanceUID)
        acked = send_until_stored(stack.service.port, first)
        wait_for(lambda: _attempts(stack, uid) >= 1, 60, "a first export attempt")
        # A late image: a new SR that supersedes the first, both waiting for the PACS.
        late = radiograph(uid, SeriesInstanceUID=first[0].SeriesInstanceUID, InstanceNumber=2)
        acked |= send_until_stored(stack.service.port, [late])
        wait_for(lambda: len(stack.export_rows(uid)) == 2, 60, "the superseding SR")
        # Classification is not held up by the outage.
        other = _study()
        other_uid = str(other[0].StudyInstanceUID)
        acked |= send_until_stored(stack.service.port, other)
        wait_for(lambda: stack.study_state(other_uid) == "done", 60, "classification during the outage")
        wait_for(lambda: _attempts(stack, uid) > 6, 120, "more than 6 attempts", interval=0.5)
        stack.tally["attempts_while_down"] = _attempts(stack, uid)
        assert all(r.state == "pending" for r in stack.export_rows(uid)), "an export gave up"
    finally:
        if silent is not None:
            silent.close()
    stack.start_pacs()
    check_one_current_sr_each(stack, [uid, other_uid])
    check_acknowledged_are_kept(stack, acked)
    predecessor, successor = stack.export_rows(uid)
    assert successor.supersedes_uid == predecessor.sr_sop_instance_uid
    with stack.db.session() as session:
        first_try = session.scalar(select(func.min(SrExportAttempt.started_at))
                                   .where(SrExportAttempt.export_id == successor.id))
    assert first_try is None or predecessor.sent_at <= first_try, "the successor was sent first"  # type: ignore[operator]


def test_idle_tls_connection_while_a_client_sends(stack: Stack) -> None:
    pki = stack.work / "pki"
    ca = make_ca(pki, "hospital-ca")
    server = make_cert(pki, "hospital-ca", "cxrtriage")
    client = make_cert(pki, "hospital-ca", "modality")
    tls_service = Service(stack.work, {**stack.service.env, "CXRTRIAGE_TLS_CERTIFICATE": str(server[0]),
                                       "CXRTRIAGE_TLS_KEY": str(server[1]), "CXRTRIAGE_TLS_CA": str(ca),
                                       "CXRTRIAGE_ACSE_TIMEOUT": "30"})
    tls_service.env["CXRTRIAGE_PORT"] = str(tls_service.port)
    receiver = tls_service.start("receiver-tls", "receiver", "--no-scheduler")
    stack.extra.append(receiver)
    wait_for(lambda: "receiver listening" in receiver.log(), 60, "the TLS receiver", interval=0.2)
    idle = [socket.create_connection((LOOPBACK, tls_service.port)) for _ in range(3)]
    try:
        datasets = _study(images=2)
        start = time.monotonic()
        acked = send_until_stored(tls_service.port, datasets, timeout=20,
                                  tls=client_context(client[0], client[1], ca))
        assert time.monotonic() - start < 10, "idle connections held up a valid client"
    finally:
        for sock in idle:
            sock.close()
    check_one_current_sr_each(stack, [str(datasets[0].StudyInstanceUID)])
    check_acknowledged_are_kept(stack, acked)
    receiver.stop()


def test_free_space_watermark_crossed(stack: Stack) -> None:
    storage = stack.work / "storage-watermark"
    storage.mkdir()
    margin = 200 * 1024**2
    watch = Service(stack.work, {**stack.service.env, "CXRTRIAGE_STORAGE_DIR": str(storage),
                                 "CXRTRIAGE_MIN_FREE_BYTES": str(shutil.disk_usage(storage).free - margin)})
    watch.env["CXRTRIAGE_PORT"] = str(watch.port)
    receiver = watch.start("receiver-watermark", "receiver", "--no-scheduler")
    stack.extra.append(receiver)
    wait_for(lambda: "receiver listening" in receiver.log(), 60, "the receiver", interval=0.2)
    filler = storage / "filler.bin"
    with open(filler, "wb") as handle:  # the volume crosses its watermark
        handle.truncate(0)
        for _ in range(2 * margin // (1024**2)):
            handle.write(bytes(1024**2))
    try:
        # Malformed patient values: a refused bad date (the SR writer cannot take one yet) and
        # an over-long name that goes all the way through once there is room again.
        bad_date = radiograph(PatientBirthDate=MALFORMED_SENTINELS["PatientBirthDate"])
        assert store_each(watch.port, [bad_date]) == {str(bad_date.SOPInstanceUID): 0xA700}
        datasets = _study(images=2, PatientName=MALFORMED_SENTINELS["PatientName"])
        statuses = store_each(watch.port, datasets)
        assert set(statuses.values()) == {0xA700}, statuses
        stack.tally["refused_0xA700"] = len(statuses) + 1
        with stack.db.session() as session:
            refusals = session.scalars(select(Rejection).where(
                Rejection.sop_instance_uid.in_(list(statuses)))).all()
        assert len(refusals) == 2 and all(r.status == 0xA700 and "watermark" in r.reason for r in refusals)
        left = [p for p in storage.rglob("*") if p.is_file() and p != filler]
        assert left == [], "a refused instance left a file behind"
    finally:
        filler.unlink()  # recovery: free space; the sender's retries are then stored
    acked = send_until_stored(watch.port, datasets)
    check_one_current_sr_each(stack, [str(datasets[0].StudyInstanceUID)])
    check_acknowledged_are_kept(stack, acked)
    receiver.stop()


def test_stack_counts_and_logs(stack: Stack) -> None:
    """Last: the stack still answers, and no log line carries patient data."""
    statuses = store_each(stack.service.port, _study())
    assert set(statuses.values()) == {SUCCESS}
    for proc in stack.procs():
        if proc.name.startswith(("receiver", "worker", "exporter")):
            assert_no_patient_data(proc.log(), f"the {proc.name} log")

