"""Scale out: the receiver, two classification workers and an export worker as separate
processes, each in a working directory of its own, sharing only what several hosts would share:
the storage path (CXRTRIAGE_STORAGE_DIR), the PostgreSQL database and the Redis broker. Orthanc is
the PACS and dcmtk's storescu the modality.

Counted, not read from log messages: instances sent and acknowledged, instances in the database,
SRs at Orthanc (exactly one per study, the one the database names), heat maps at Orthanc, and the
studies each classification worker finished (every study exactly once, by one worker or the
other, and each worker some). No process may write into its own working directory: one that did
would depend on a host-local default (a SQLite file, the filesystem broker, relative storage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom.uid import SegmentationStorage, generate_uid

from cxrtriage.dicom.contexts import SECONDARY_CAPTURE
from tests.conftest import assert_no_patient_data
from tests.factory import COMPREHENSIVE_3D_SR, radiograph, write_study
from tests.peers import echoscu, storescu
from tests.servers import (
    LOOPBACK,
    Orthanc,
    Proc,
    free_port,
    running,
    start_postgres,
    start_redis,
    wait_for,
)

STUDIES = 8  # every other one with two images: 12 instances
SAMPLES = ("pneumonia-1", "normal-1", "pneumonia-2", "normal-2")
CLASSIFIERS = ("worker-a", "worker-b")


def _finished_by(log: str) -> list[str]:
    """Study UIDs a worker's JSON log says it finished (worker/processing.py), in order."""
    uids = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("message") == "study finished":
                uids.append(record["study_uid"])
    return uids


def _instances(orthanc: Orthanc, study_uid: str, sop_class: str) -> list[dict[str, Any]]:
    found = orthanc.post("/tools/find", {"Level": "Instance", "Expand": True, "Query": {
        "StudyInstanceUID": study_uid, "SOPClassUID": sop_class}})
    return cast(list[dict[str, Any]], found)


@pytest.mark.slow
def test_processes_share_only_storage_database_and_broker(tmp_path: Path, tiny_package: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[Proc] = []  # cxr-triage's processes first, so that they stop before the servers
    with running(procs):
        redis, redis_port = start_redis(logs)
        procs.append(redis)
        postgres, db_url = start_postgres(logs)
        procs.append(postgres)
        port = free_port()
        orthanc = Orthanc(tmp_path / "pacs", logs, "CXRTRIAGE", port)
        procs.append(orthanc.proc)
        env = {
            "CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": db_url,
            "CXRTRIAGE_BROKER_URL": f"redis://{LOOPBACK}:{redis_port}/0",
            "CXRTRIAGE_STORAGE_DIR": str(tmp_path / "shared-storage"),
            "CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_PORT": str(port),
            "CXRTRIAGE_SR_DESTINATION": f"{orthanc.ae_title}@{LOOPBACK}:{orthanc.dicom_port}",
            "CXRTRIAGE_ALLOWED_CALLING_AES": "DCMTKSCU,ECHOSCU", "CXRTRIAGE_ALLOWED_PEERS": "127.0.0.1/32",
            "CXRTRIAGE_TLS_REQUIRED": "false",
            "CXRTRIAGE_STUDY_QUIET_SECONDS": "1", "CXRTRIAGE_SWEEP_INTERVAL_SECONDS": "0.2",
            "CXRTRIAGE_SR_RETRY_BASE_SECONDS": "0.5",
            # Batches of two: a worker cannot take all eight studies along with its first message.
            "CXRTRIAGE_BATCH_STUDIES": "2", "CXRTRIAGE_DECODE_PROCESSES": "1",
            "PYTHONUNBUFFERED": "1"}
        homes: dict[str, Path] = {}

        def cli(*args: str) -> str:
            home = homes.setdefault("ops", tmp_path / "ops")
            home.mkdir(exist_ok=True)
            result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", *args], cwd=home,
                                    env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr[-3000:]
            return result.stdout

        def start(name: str, *args: str) -> Proc:
            home = homes[name] = tmp_path / name
            home.mkdir()
            proc = Proc(name, [sys.executable, "-m", "cxrtriage.cli", *args], logs, env=env, cwd=home)
            procs.insert(0, proc)
            return proc

        assert "latest revision" in cli("db", "upgrade")
        receiver = start("receiver", "receiver")
        workers = [start(name, "worker", "--pool", "solo", "--queues", "studies") for name in CLASSIFIERS]
        exporter = start("exporter", "worker", "--pool", "threads", "--queues", "exports",
                         "--concurrency", "2")
        wait_for(lambda: echoscu(port), 60, "receiver C-ECHO", interval=0.5)
        # Every worker consuming before the studies arrive, so that both classifiers compete.
        wait_for(lambda: all(' ready."' in proc.log() for proc in (*workers, exporter)), 60,
                 "every Celery worker ready", interval=0.5)

        studies = [generate_uid() for _ in range(STUDIES)]
        files = [path for i, uid in enumerate(studies) for path in write_study(
            tmp_path / "sent" / uid, [radiograph(uid, SAMPLES[(i + j) % len(SAMPLES)], InstanceNumber=j + 1)
                                      for j in range(1 + i % 2)])]
        sent = storescu(port, files, extra=("-v",))
        assert sent.returncode == 0, sent.stderr[-2000:]
        acknowledged = (sent.stdout + sent.stderr).count("Received Store Response (Success)")
        assert acknowledged == len(files) == 12

        def all_sent() -> list[dict[str, Any]]:
            rows = json.loads(cli("studies", "--json"))["studies"]
            mine = [r for r in rows if r["study_uid"] in studies]
            return mine if len(mine) == STUDIES and all(r["sr_state"] == "sent" for r in mine) else []

        rows = cast(list[dict[str, Any]], wait_for(all_sent, 90, "every study's SR sent", interval=1.0))
        assert all(r["state"] == "done" for r in rows)
        assert sum(r["instances"] for r in rows) == acknowledged
        assert sum(len(r["image_results"]) for r in rows) == acknowledged

        # At the PACS: exactly one SR per study, the one the database calls current; and a heat
        # map picture and a heat map segmentation per image.
        sr_uid = {r["study_uid"]: r["sr_uid"] for r in rows}
        images = {r["study_uid"]: r["instances"] for r in rows}
        for uid in studies:
            srs = _instances(orthanc, uid, COMPREHENSIVE_3D_SR)
            assert [sr["MainDicomTags"]["SOPInstanceUID"] for sr in srs] == [sr_uid[uid]]

        def heatmaps_arrived() -> bool:
            return all(len(_instances(orthanc, uid, kind)) == images[uid]
                       for uid in studies for kind in (SECONDARY_CAPTURE, SegmentationStorage))

        wait_for(heatmaps_arrived, 30, "a heat map picture and segmentation per image at Orthanc",
                 interval=0.5)
        statistics = cast(dict[str, Any], orthanc.get("/statistics"))
        assert statistics["CountInstances"] == STUDIES + 2 * acknowledged  # SRs and heat maps only

        # Who did the work: every study finished exactly once, each classification worker some,
        # and the export worker sent every SR and heat map while the classifiers sent none.
        finished = {proc.name: _finished_by(proc.log()) for proc in workers}
        assert sorted(finished["worker-a"] + finished["worker-b"]) == sorted(studies), finished
        assert all(finished.values()), f"one classification worker did nothing: {finished}"
        assert exporter.log().count('"SR export attempt"') >= STUDIES + 2 * acknowledged
        assert all('"SR export attempt"' not in proc.log() for proc in workers)
        assert all(proc.alive() for proc in (receiver, *workers, exporter))

        for name, home in homes.items():
            assert not any(home.iterdir()), f"{name} wrote into its working directory: {list(home.iterdir())}"
        for proc in (receiver, *workers, exporter):
            proc.stop()
            assert_no_patient_data(proc.log(), f"the {proc.name} log")
