"""Study state transitions on a real (in-memory) SQLite database: each runs once, and only a
dead worker's study is handed on."""

from datetime import timedelta

import pytest

from cxrtriage.db import ingest
from cxrtriage.db.models import Base, Study, utcnow
from cxrtriage.db.operations import ReprocessSelection, requeue_finished, select_for_reprocessing
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database
from cxrtriage.db.studies import (
    claim_study,
    finish_study,
    queue_quiet_studies,
    requeue_abandoned,
)
from cxrtriage.domain import ModelInfo, Reason, StoredInstance
from cxrtriage.errors import InstanceConflictError


@pytest.fixture
def db():
    database = Database("sqlite://")
    Base.metadata.create_all(database.engine)
    return database


def _receive(db, study="1.2.3", sop="1.2.3.1", assoc="a1", sha="aa", patient="P1"):
    with db.session() as s:
        if s.get(ingest.Association, assoc) is None:
            ingest.open_association(s, assoc, "MOD", "127.0.0.1:1")
        ingest.index_instance(s, StoredInstance(assoc, study, study + ".9", sop, "1.2", "DX",
                                                "1.2.840.10008.1.2.1", "/x", 1, sha, patient))


def _queue(db):
    with db.session() as s:
        for assoc in ("a1", "a2"):
            ingest.close_association(s, assoc)
        return queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1))


def _state(db, uid="1.2.3"):
    with db.session() as s:
        study = s.scalar(ingest.select(Study).where(Study.study_uid == uid))
        return study.state, study.revision


def test_open_association_holds_the_study_back_then_it_is_queued_once(db):
    _receive(db)
    later = utcnow() + timedelta(seconds=60)
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=later) == []  # its association is still open
        ingest.close_association(s, "a1")
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=later) == ["1.2.3"]
        assert queue_quiet_studies(s, 10, now=later) == []


def test_an_association_open_past_the_hold_limit_no_longer_holds_its_study(db):
    _receive(db)
    with db.session() as s:  # kept open with C-ECHOs: never closed, never idle
        assert queue_quiet_studies(s, 10, now=utcnow() + timedelta(seconds=60), max_hold_seconds=120) == []
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=utcnow() + timedelta(seconds=121),
                                   max_hold_seconds=120) == ["1.2.3"]
    _receive(db, sop="1.2.3.2")  # a later instance on the same association: the late path
    assert _state(db) == ("received", 2)
    with db.session() as s:
        assert queue_quiet_studies(s, 10, now=utcnow() + timedelta(seconds=121),
                                   max_hold_seconds=120) == ["1.2.3"]


def test_late_instance_requeues_and_stale_claim_cannot_finish(db):
    _receive(db)
    with db.session() as s:
        ingest.close_association(s, "a1")
        queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1))
    with db.session() as s:
        claim = claim_study(s, "1.2.3", 60, 3)
        claimed = (claim.study_id, claim.revision, claim.attempt)
    _receive(db, sop="1.2.3.2", assoc="a2")  # arrives while the worker works
    with db.session() as s:
        assert not finish_study(s, *claimed, "done", None, False, None)
        assert s.get(Study, claimed[0]).state == "received"


def test_expired_lease_is_redone_and_reprocessing_starts_a_fresh_count(db):
    _receive(db)
    with db.session() as s:
        ingest.close_association(s, "a1")
        queue_quiet_studies(s, 0, now=utcnow() + timedelta(seconds=1))
        claim_study(s, "1.2.3", 0.01, 3)
    with db.session() as s:
        assert requeue_abandoned(s, 600, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
        claim = claim_study(s, "1.2.3", 60, 3)
        assert claim.attempt == 2 and not claim.exhausted
        assert finish_study(s, claim.study_id, claim.revision, 2, "done", None, False, None)
    for version in range(3):  # three new model versions in a row
        with db.session() as s:
            info = ModelInfo(f"m{version}", "1", "us", f"1.2.3.{version}", f"{version:064d}")
            version = register_model(s, info, {})
            assert select_for_reprocessing(s, ReprocessSelection(not_read_by=(version,))) == ["1.2.3"]
            assert requeue_finished(s, "1.2.3", ("done",), "reprocessing with a new model version")
            claim = claim_study(s, "1.2.3", 60, 3)
            assert claim.attempt == 1
            assert finish_study(s, claim.study_id, claim.revision, 1, "done", None, False, version)


def test_attempt_limit_holds_at_claim_time_however_the_study_was_dispatched(db):
    _receive(db)
    _queue(db)
    for attempt in (1, 2, 3, 4):
        with db.session() as s:
            claim = claim_study(s, "1.2.3", 0.01, 3)
            assert claim.attempt == attempt and claim.exhausted is (attempt > 3)
        with db.session() as s:  # the worker died: the scheduler requeues at once
            assert requeue_abandoned(s, 600, now=utcnow() + timedelta(seconds=1)) == ["1.2.3"]
    with db.session() as s:
        claim = claim_study(s, "1.2.3", 60, 3)
        assert finish_study(s, claim.study_id, claim.revision, claim.attempt, "failed",
                            Reason.ATTEMPTS_EXHAUSTED, None, None)
        study = s.get(Study, claim.study_id)
        assert (study.reason_code, study.reason) == ("attempts-exhausted", Reason.ATTEMPTS_EXHAUSTED.text)


@pytest.mark.parametrize(("study", "patient", "sha", "outcome"), [
    ("1.2.3", "P1", "aa", "no-op"),          # the same file again
    ("1.2.3", "P1", "bb", "read again"),     # new content, same study and patient
    ("1.2.4", "P1", "aa", "refused"),        # the UID under another study
    ("1.2.3", "P2", "bb", "refused"),        # the UID under another patient
    ("1.2.4", "P2", "bb", "refused"),
])
def test_resent_sop_instance_uid(db, study, patient, sha, outcome):
    _receive(db)
    _queue(db)
    before = _state(db)
    if outcome == "refused":
        with pytest.raises(InstanceConflictError):
            _receive(db, study=study, sha=sha, patient=patient, assoc="a2")
        assert _state(db) == before
        with db.session() as s:
            row = s.scalar(ingest.select(ingest.Instance))
            assert (row.sha256, row.patient_id) == ("aa", "P1")  # the stored instance is untouched
        return
    _receive(db, study=study, sha=sha, patient=patient, assoc="a2")
    state, revision = _state(db)
    if outcome == "no-op":
        assert (state, revision) == before
    else:
        assert state == "received" and revision == before[1] + 1


def test_same_weights_with_a_new_operating_point_is_a_new_model_version(tmp_path):
    """A new version may change only the threshold; it must read studies again as itself."""
    from cxrtriage.db.session import upgrade

    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)  # the migrations, not create_all: the unique constraint moved in 0006
    database = Database(url)
    with database.session() as s:
        old = register_model(s, ModelInfo("m", "1.1.0", "us", "1.2.3.1", "a" * 64), {"threshold": 0.21})
        new = register_model(s, ModelInfo("m", "1.2.0", "us", "1.2.3.2", "a" * 64), {"threshold": 0.88})
        again = register_model(s, ModelInfo("m", "1.2.0", "us", "1.2.3.2", "a" * 64), {"threshold": 0.88})
    assert old != new == again
