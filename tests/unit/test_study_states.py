"""Study state transitions on a real (in-memory) SQLite database: each runs once, and only a
dead worker's study is handed on."""

from datetime import timedelta

import pytest

from cxrtriage.db import ingest
from cxrtriage.db.models import Base, Study, utcnow
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database
from cxrtriage.db.studies import (
    claim_study,
    finish_study,
    mark_for_reprocessing,
    queue_quiet_studies,
    requeue_abandoned,
)
from cxrtriage.domain import ModelInfo


@pytest.fixture
def db():
    database = Database("sqlite://")
    Base.metadata.create_all(database.engine)
    return database


def _receive(db, study="1.2.3", sop="1.2.3.1", assoc="a1"):
    with db.session() as s:
        ingest.open_association(s, assoc, "MOD", "127.0.0.1:1")
        ingest.index_instance(s, association_id=assoc, study_uid=study, series_uid=study + ".9",
                              sop_instance_uid=sop, sop_class_uid="1.2", modality="DX",
                              transfer_syntax="1.2.840.10008.1.2.1", path="/x", size_bytes=1)


def test_open_association_holds_the_study_back_then_it_is_queued_once(db):
    _receive(db)
    later = utcnow() + timedelta(seconds=60)
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=later) == []  # its association is still open
        ingest.close_association(s, "a1")
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=later) == ["1.2.3"]
        assert queue_quiet_studies(s, 10, now=later) == []


def test_late_instance_requeues_and_stale_claim_cannot_finish(db):
    _receive(db)
    with db.session() as s:
        ingest.close_association(s, "a1")
        queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1))
    with db.session() as s:
        study = claim_study(s, "1.2.3", 60)
        claimed = (study.id, study.claimed_revision, study.attempts)
    _receive(db, sop="1.2.3.2", assoc="a2")  # arrives while the worker works
    with db.session() as s:
        assert not finish_study(s, *claimed, "done", "", False, None)
        assert s.get(Study, claimed[0]).state == "received"


def test_expired_lease_is_redone_and_reprocessing_starts_a_fresh_count(db):
    _receive(db)
    with db.session() as s:
        ingest.close_association(s, "a1")
        queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1))
        claim_study(s, "1.2.3", 0.01)
    with db.session() as s:
        assert requeue_abandoned(s, 600, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
        study = claim_study(s, "1.2.3", 60)
        assert study.attempts == 2
        assert finish_study(s, study.id, study.claimed_revision, 2, "done", "", False, None)
    for version in range(3):  # three new model versions in a row
        with db.session() as s:
            info = ModelInfo(f"m{version}", "1", "us", "1.2.3", f"{version:064d}")
            version = register_model(s, info, {})
            assert mark_for_reprocessing(s, version) == ["1.2.3"]
            study = claim_study(s, "1.2.3", 60)
            assert study.attempts == 1
            assert finish_study(s, study.id, study.claimed_revision, 1, "done", "", False, version)
