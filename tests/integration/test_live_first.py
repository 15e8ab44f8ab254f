"""Live studies go before bulk reprocessing: a worker filling a batch takes them first, and new
images make a requeued study live again (SQLite, migrated with Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cxrtriage.db.ingest import index_instance
from cxrtriage.db.models import Study
from cxrtriage.db.operations import requeue_finished
from cxrtriage.db.session import Database, upgrade
from cxrtriage.db.studies import ready_studies
from cxrtriage.domain import FINISHED, StoredInstance, StudyState

DX = "1.2.840.10008.5.1.4.1.1.1.1"



@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return Database(url)


def _add(db: Database, uid: str, state: StudyState, queued_at: datetime | None = None) -> None:
    with db.session() as s:
        s.add(Study(study_uid=uid, state=state, revision=0, queued_at=queued_at))


def test_a_batch_takes_live_studies_before_older_bulk_ones(db):
    for n in range(3):
        _add(db, f"old-{n}", StudyState.DONE)
    with db.session() as s:
        assert all(requeue_finished(s, f"old-{n}", tuple(FINISHED), "reprocess") for n in range(3))
    later = datetime.now(UTC) + timedelta(minutes=5)
    _add(db, "live", StudyState.QUEUED, queued_at=later)  # queued after the bulk ones
    with db.session() as s:
        assert ready_studies(s, 2) == ["live", "old-0"]
        assert ready_studies(s, 10) == ["live", "old-0", "old-1", "old-2"]


def test_new_images_make_a_requeued_study_live_again(db, tmp_path):
    _add(db, "1.2.3", StudyState.DONE)
    with db.session() as s:
        assert requeue_finished(s, "1.2.3", tuple(FINISHED), "reprocess")
        assert s.scalar(select(Study.bulk)) is True
    with db.session() as s:
        index_instance(s, StoredInstance("assoc", "1.2.3", "1.2.3.1", "1.2.3.1.1", DX, "DX",
                                         "1.2.840.10008.1.2.1", str(tmp_path / "f.dcm"), 10, "ab" * 32))
    with db.session() as s:
        assert s.execute(select(Study.bulk, Study.state)).one() == (False, StudyState.RECEIVED)
