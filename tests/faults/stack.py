"""The fault suite's stack: Redis, PostgreSQL, Orthanc (the PACS), `cxrtriage receiver` and the
two workers (studies, exports), as real processes that a scenario kills, restarts or starves.
Also the two counts that end every scenario, and a sender that retries what was not stored."""

from __future__ import annotations

import functools
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from cxrtriage.db.models import Instance, SrExport, Study
from cxrtriage.db.session import Database
from cxrtriage.domain import SR_KINDS
from tests.conftest import Service
from tests.factory import COMPREHENSIVE_3D_SR
from tests.servers import LOOPBACK, Orthanc, Proc, binary, port_open, wait_for

SUCCESS = 0x0000


def restart(proc: Proc, log_dir: Path, sig: int = signal.SIGTERM, user: str | None = None,
            down_seconds: float = 0.0) -> Proc:
    """Stop a server and start the same command again (same ports, same data)."""
    cmd, cleanup = list(proc.proc.args), proc.cleanup  # type: ignore[arg-type]
    proc.cleanup = None  # keep its data directory across the restart
    proc.stop(sig)
    time.sleep(down_seconds)
    again = Proc(proc.name, cmd, log_dir, user=user)
    again.cleanup = cleanup
    return again


@dataclass
class Stack:
    work: Path
    service: Service
    orthanc: Orthanc
    redis: Proc
    redis_port: int
    postgres: Proc
    db_url: str
    receiver: Proc | None = None
    worker: Proc | None = None
    exporter: Proc | None = None
    extra: list[Proc] = field(default_factory=list)
    tally: dict[str, int] = field(default_factory=dict)  # what the current scenario counted

    @functools.cached_property
    def db(self) -> Database:
        return Database(self.db_url)  # one pool; pre-ping reconnects after a restart

    def procs(self) -> list[Proc]:
        found = [self.redis, self.postgres, self.orthanc.proc, self.receiver, self.worker, self.exporter,
                 *self.extra]
        return [p for p in found if p is not None]

    # -- cxrtriage processes ---------------------------------------------------------------
    def start_receiver(self) -> None:
        self.receiver = self.service.start("receiver", "receiver")
        wait_for(lambda: "receiver listening" in self.receiver.log() and port_open(self.service.port),  # type: ignore[union-attr]
                 60, "the receiver", interval=0.2)

    def start_worker(self) -> None:
        self.worker = self.service.start("worker", "worker", "--queues", "studies")
        wait_for(lambda: "ready" in self.worker.log(), 90, "the studies worker", interval=0.3)  # type: ignore[union-attr]

    def start_exporter(self) -> None:
        self.exporter = self.service.start("exporter", "worker", "--queues", "exports", "--pool",
                                           "threads", "--concurrency", "4")
        wait_for(lambda: "ready" in self.exporter.log(), 90, "the export worker", interval=0.3)  # type: ignore[union-attr]

    # -- the PACS -------------------------------------------------------------------------------
    def stop_pacs(self) -> None:
        self.orthanc.proc.stop()

    def start_pacs(self) -> None:
        config = self.work / "orthanc" / "orthanc.json"
        self.orthanc.proc = Proc("orthanc", [binary("Orthanc", ("/usr/sbin",)), str(config)], self.work)
        wait_for(lambda: self.orthanc.get("/system"), 60, "orthanc", interval=0.3)

    # -- state ----------------------------------------------------------------------------------
    def study_state(self, study_uid: str) -> str | None:
        with self.db.session() as session:
            return session.scalar(select(Study.state).where(Study.study_uid == study_uid))

    def export_rows(self, study_uid: str) -> list[SrExport]:
        with self.db.session() as session:
            return list(session.scalars(select(SrExport).join(Study, Study.id == SrExport.study_id)
                                        .where(Study.study_uid == study_uid)
                                        .order_by(SrExport.id)).all())


# -- sending ----------------------------------------------------------------------------------------
def store_each(port: int, datasets: list[Dataset], tls: ssl.SSLContext | None = None,
               after_each: object = None) -> dict[str, int]:
    """C-STORE data sets over one association; the status the sender saw for each (none when
    the association broke first). `after_each(n)` runs after the n-th answer; when it returns
    true the sender stops, as a modality does when its association breaks."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 15
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE",
                         tls_args=(tls, LOOPBACK) if tls is not None else None)
    statuses: dict[str, int] = {}
    if not assoc.is_established:
        return statuses
    try:
        for n, ds in enumerate(datasets, start=1):
            if not assoc.is_established:
                break
            answer = assoc.send_c_store(ds)
            if answer and "Status" in answer:
                statuses[str(ds.SOPInstanceUID)] = int(answer.Status)
            if callable(after_each) and after_each(n):
                break
    finally:
        if assoc.is_established:
            assoc.abort() if callable(after_each) else assoc.release()
    return statuses


def send_until_stored(port: int, datasets: list[Dataset], timeout: float = 120.0,
                      tls: ssl.SSLContext | None = None) -> set[str]:
    """What a modality does: send, and send again whatever was not acknowledged."""
    acked: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [ds for ds in datasets if str(ds.SOPInstanceUID) not in acked]
        if not pending:
            return acked
        try:
            statuses = store_each(port, pending, tls)
        except (OSError, RuntimeError):
            statuses = {}
        acked |= {uid for uid, status in statuses.items() if status == SUCCESS}
        if len(acked) < len(datasets):
            time.sleep(0.5)
    raise TimeoutError(f"{len(datasets) - len(acked)} of {len(datasets)} instances never stored")


# -- the two counts ---------------------------------------------------------------------------------
def srs_at_pacs(orthanc: Orthanc, study_uid: str) -> list[Dataset]:
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
        "StudyInstanceUID": study_uid, "SOPClassUID": COMPREHENSIVE_3D_SR}})
    return [pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{i}/file")))  # type: ignore[arg-type]
            for i in found]  # type: ignore[union-attr]


def current_srs(srs: list[Dataset]) -> list[Dataset]:
    """Our SRs that no other SR at the PACS supersedes."""
    superseded = set()
    for sr in srs:
        for series in sr.get("PredecessorDocumentsSequence", []):
            for ref in series.ReferencedSeriesSequence:
                superseded |= {str(r.ReferencedSOPInstanceUID) for r in ref.ReferencedSOPSequence}
    return [sr for sr in srs if str(sr.SOPInstanceUID) not in superseded]


def check_one_current_sr_each(stack: Stack, study_uids: list[str], timeout: float = 120.0) -> dict[str, str]:
    """Count 1: every study sent has exactly one current SR at Orthanc, and it is the study's
    latest SR in the database. Returns study UID -> current SR UID."""
    current: dict[str, str] = {}

    def settled() -> bool:
        for uid in study_uids:
            if uid in current:
                continue
            rows = [r for r in stack.export_rows(uid) if r.kind in SR_KINDS]
            if not rows or rows[-1].state != "sent":
                return False
            found = current_srs(srs_at_pacs(stack.orthanc, uid))
            if len(found) != 1 or str(found[0].SOPInstanceUID) != rows[-1].sr_sop_instance_uid:
                return False
            current[uid] = rows[-1].sr_sop_instance_uid
        return True

    wait_for(settled, timeout, f"one current SR for each of {len(study_uids)} studies", interval=0.5)
    at_pacs = 0
    for uid in study_uids:  # and nothing more arrives
        srs = srs_at_pacs(stack.orthanc, uid)
        assert len(current_srs(srs)) == 1
        at_pacs += len(srs)
    stack.tally.update(studies_sent=len(study_uids), current_srs=len(current), srs_at_pacs=at_pacs)
    return current


def check_acknowledged_are_kept(stack: Stack, acked: set[str]) -> None:
    """Count 2: every instance that got a success status is in the database and in storage."""
    with stack.db.session() as session:
        rows = {i.sop_instance_uid: i.path for i in session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(sorted(acked)))).all()}
    missing_rows = acked - set(rows)
    missing_files = [uid for uid, path in rows.items() if not os.path.isfile(path)]
    assert not missing_rows, f"{len(missing_rows)} acknowledged instances are not in the database"
    assert not missing_files, f"{len(missing_files)} acknowledged instances have no file"
    stack.tally.update(instances_acknowledged=len(acked), in_db_and_storage=len(rows) - len(missing_files))
