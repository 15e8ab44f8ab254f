"""Production mode: PostgreSQL (migrated with Alembic), Redis as the broker, two Celery workers,
dcmtk's storescu sending and dcmtk's storescp receiving the SR."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SegmentationStorage, generate_uid

from cxrtriage.dicom.contexts import SECONDARY_CAPTURE
from tests.factory import COMPREHENSIVE_3D_SR, radiograph, write_study
from tests.peers import echoscu, storescu
from tests.servers import (
    LOOPBACK,
    Proc,
    binary,
    free_port,
    port_open,
    start_postgres,
    start_redis,
    wait_for,
)


@pytest.mark.slow
def test_redis_postgres_two_workers(tmp_path: Path, service_factory, tiny_package) -> None:
    redis, redis_port = start_redis(tmp_path)
    postgres, db_url = start_postgres(tmp_path)
    scp_port = free_port()
    inbox = tmp_path / "pacs-inbox"
    inbox.mkdir()
    storescp = Proc("storescp", [binary("storescp"), "-aet", "PACS", "-od", str(inbox), "+xa",
                                 str(scp_port)], tmp_path)
    service = service_factory({
        "CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": db_url,
        "CXRTRIAGE_BROKER_URL": f"redis://{LOOPBACK}:{redis_port}/0",
        "CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_SR_DESTINATION": f"PACS@{LOOPBACK}:{scp_port}",
        "CXRTRIAGE_ALLOWED_CALLING_AES": "DCMTKSCU,ECHOSCU", "CXRTRIAGE_ALLOWED_PEERS": "127.0.0.1/32",
        "CXRTRIAGE_TLS_REQUIRED": "false"})
    service.procs += [redis, postgres, storescp]
    wait_for(lambda: port_open(scp_port), 30, "storescp")
    assert "latest revision" in service.cli("db", "upgrade")
    service.start("receiver", "receiver")
    service.start("worker-1", "worker")
    service.start("worker-2", "worker")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)

    studies = [generate_uid() for _ in range(3)]
    files = [f for uid in studies for f in write_study(tmp_path / uid, [radiograph(uid), radiograph(uid)])]
    assert storescu(service.port, files).returncode == 0

    def all_sent() -> list[dict]:
        rows = json.loads(service.cli("studies", "--json"))["studies"]
        mine = [r for r in rows if r["study_uid"] in studies]
        return mine if len(mine) == 3 and all(r["sr_state"] == "sent" for r in mine) else []

    rows = wait_for(all_sent, 120, "three SRs sent", interval=0.5)
    assert all(r["state"] == "done" and len(r["image_results"]) == 2 for r in rows)  # type: ignore[union-attr]
    wait_for(lambda: len(list(inbox.iterdir())) == 3 + 6 + 6, 60,
             "three SRs, six heatmap pictures and six heatmap segmentations at the PACS")
    received = [pydicom.dcmread(p) for p in inbox.iterdir()]
    srs = [ds for ds in received if ds.SOPClassUID == COMPREHENSIVE_3D_SR]
    heatmaps = [ds for ds in received if ds.SOPClassUID == SECONDARY_CAPTURE]
    segmentations = [ds for ds in received if ds.SOPClassUID == SegmentationStorage]
    assert sorted(str(ds.StudyInstanceUID) for ds in srs) == sorted(studies)
    assert {str(ds.SOPInstanceUID) for ds in srs} == {r["sr_uid"] for r in rows}  # type: ignore[union-attr]
    assert len(heatmaps) == 6 and {str(ds.StudyInstanceUID) for ds in heatmaps} == set(studies)
    assert len(segmentations) == 6 and {str(ds.StudyInstanceUID) for ds in segmentations} == set(studies)
    worker_logs = [p.log() for p in service.procs if p.name.startswith("worker")]
    assert all("cxrtriage.process_study" in log for log in worker_logs) or len(studies) < 2
    service.stop()
    service.check_logs()
