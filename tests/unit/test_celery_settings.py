"""Celery for long GPU tasks: late acknowledgement, prefetch one, a visibility timeout above the
longest task, and the database (not the broker) capping redelivery."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cxrtriage.config import Settings
from cxrtriage.db import ingest
from cxrtriage.db.models import Base, Study, utcnow
from cxrtriage.db.session import Database
from cxrtriage.db.studies import claim_study, finish_study, queue_quiet_studies, requeue_abandoned
from cxrtriage.domain import Reason, StoredInstance, StudyState
from cxrtriage.worker.app import celery_settings

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
    the scheduler hands the study on. Past the attempt limit the claim is marked exhausted, the
    worker records "not analysed" without reading the study again, and a redelivered message
    then finds nothing to claim."""
    limit = Settings().study_max_attempts
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    with db.session() as s:
        ingest.open_association(s, "a", "MOD", "127.0.0.1:1")
        ingest.index_instance(s, StoredInstance("a", "1.2.3", "1.2.3.9", "1.2.3.1", "1.2", "DX",
                                                "1.2.840.10008.1.2.1", "/x", 1, "aa", "P"))
        ingest.close_association(s, "a")
    with db.session() as s:
        assert queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
    for attempt in range(1, limit + 2):
        with db.session() as s:
            claim = claim_study(s, "1.2.3", 0.001, limit)  # the worker dies: its lease expires
            assert claim is not None and claim.attempt == attempt
            assert claim.exhausted is (attempt > limit)
        if attempt <= limit:
            with db.session() as s:
                assert requeue_abandoned(s, 600, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
    with db.session() as s:
        assert finish_study(s, claim.study_id, claim.revision, claim.attempt, StudyState.FAILED,
                            Reason.ATTEMPTS_EXHAUSTED, None, None)
        assert s.query(Study).one().reason_code == Reason.ATTEMPTS_EXHAUSTED
        assert claim_study(s, "1.2.3", 60, limit) is None, "a redelivered message does nothing"
