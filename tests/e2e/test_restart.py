"""A worker killed mid-study: the study is redone by the next worker, and completes once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cxrtriage.db.models import InferenceResult, SrExport, Study
from cxrtriage.db.session import Database
from tests.factory import radiograph, random_package, write_study
from tests.peers import echoscu, storescu
from tests.servers import wait_for

IMAGES = 12


@pytest.mark.slow
def test_killed_worker_study_is_redone_once(tmp_path: Path, service_factory) -> None:
    # A heavier random package so that processing lasts long enough to be interrupted.
    package = random_package(tmp_path / "slow-pkg", architecture="resnet50", input_size=384)
    service = service_factory({"CXRTRIAGE_MODEL": str(package),
                               "CXRTRIAGE_PROCESSING_LEASE_SECONDS": "6"})
    db = Database(f"sqlite:///{tmp_path}/var/cxrtriage.db")
    service.start("receiver", "receiver")
    worker = service.start("worker-1", "worker")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    wait_for(lambda: "ready" in worker.log(), 60, "worker ready", interval=0.3)

    study_uid = generate_uid()
    files = write_study(tmp_path / "send", [radiograph(study_uid) for _ in range(IMAGES)])
    assert storescu(service.port, files).returncode == 0

    def state() -> str | None:
        with db.session() as session:
            return session.scalar(select(Study.state).where(Study.study_uid == study_uid))

    wait_for(lambda: state() == "processing", 60, "the study to be processing", interval=0.02)
    worker.stop(signal.SIGKILL)
    assert state() == "processing", "the study finished before the worker could be killed"

    service.start("worker-2", "worker")
    wait_for(lambda: state() == "done", 180, "the study to be redone", interval=0.5)
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None and study.attempts == 2
        results = session.scalar(select(func.count()).select_from(InferenceResult))
        kinds = [k for (k,) in session.execute(select(SrExport.kind)).all()]
    assert results == IMAGES, "each image has exactly one result"
    assert kinds.count("analysed") == 1, "exactly one SR for the study"
    assert kinds.count("heatmap") == IMAGES, "exactly one heatmap per image"
    assert kinds.count("heatmap_seg") == IMAGES, "exactly one heatmap segmentation per image"
    assert len(kinds) == 1 + 2 * IMAGES
    service.stop()
    service.check_logs()
