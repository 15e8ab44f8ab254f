"""Celery for long GPU tasks: late acknowledgement, prefetch one, a visibility timeout above the
longest task, and the database (not the broker) capping redelivery."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cxrtriage.config import Settings
from cxrtriage.db import ingest
from cxrtriage.db.models import Base, Study, utcnow
from cxrtriage.db.session import Database
from cxrtriage.db.studies import claim_study, queue_quiet_studies, requeue_abandoned
from cxrtriage.worker.app import celery_settings
from cxrtriage.worker.scheduler import MAX_STUDY_ATTEMPTS, fail_exhausted

REDIS = Settings(broker_url="redis://localhost:6379/0", broker_visibility_timeout_seconds=5400)


@pytest.mark.parametrize(("key", "expected"), [
    ("task_acks_late", True),
    ("worker_prefetch_multiplier", 1),
    ("task_reject_on_worker_lost", True),
    ("worker_cancel_long_running_tasks_on_connection_loss", True),
    ("task_ignore_result", True),
    ("accept_content", ["json"]),
    ("task_serializer", "json"),
    ("broker_transport_options", {"visibility_timeout": 5400}),
])
def test_celery_setting(key: str, expected: object) -> None:
    assert celery_settings(REDIS)[key] == expected


def test_visibility_timeout_exceeds_the_processing_lease_by_default() -> None:
    settings = Settings(broker_url="redis://localhost:6379/0")
    timeout = celery_settings(settings)["broker_transport_options"]["visibility_timeout"]
    assert timeout > 10 * settings.processing_lease_seconds


def test_filesystem_broker_has_no_visibility_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = celery_settings(Settings(broker_dir=tmp_path))["broker_transport_options"]
    assert "visibility_timeout" not in options and options["data_folder_in"].startswith(str(tmp_path))


def test_the_attempt_count_in_the_database_caps_redelivery() -> None:
    """A worker killed mid-study (solo pool: the broker cannot tell) leaves its lease to expire;
    the scheduler hands the study on, and after MAX_STUDY_ATTEMPTS claims fails it, so a
    redelivered message finds nothing to claim."""
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    with db.session() as s:
        ingest.open_association(s, "a", "MOD", "127.0.0.1:1")
        ingest.index_instance(s, association_id="a", study_uid="1.2.3", series_uid="1.2.3.9",
                              sop_instance_uid="1.2.3.1", sop_class_uid="1.2", modality="DX",
                              transfer_syntax="1.2.840.10008.1.2.1", path="/x", size_bytes=1)
        ingest.close_association(s, "a")
    with db.session() as s:
        assert queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
    for attempt in range(1, MAX_STUDY_ATTEMPTS + 1):
        with db.session() as s:
            study = claim_study(s, "1.2.3", 0.001)  # the worker dies: its lease expires
            assert study is not None and study.attempts == attempt
        with db.session() as s:
            assert requeue_abandoned(s, 600, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
        fail_exhausted(db)
    with db.session() as s:
        study = s.query(Study).one()
        assert study.state == "failed" and str(MAX_STUDY_ATTEMPTS) in study.reason
        assert claim_study(s, "1.2.3", 60) is None, "a redelivered message does nothing"
