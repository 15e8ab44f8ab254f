"""A study is queued when it goes quiet, not at the scheduler's next tick: the scheduler sleeps
until the next study's quiet time (or its interval, whichever is sooner), and a study still
being sent waits for its association's close, which wakes the scheduler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cxrtriage.config import Settings
from cxrtriage.db.ingest import close_association, open_association
from cxrtriage.db.models import Study, StudyAssociation
from cxrtriage.db.session import Database, upgrade
from cxrtriage.db.studies import next_quiet_at
from cxrtriage.worker.scheduler import MIN_PAUSE_SECONDS, Swept, pause_seconds

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    return Database(url)


def test_the_next_quiet_time_is_the_earliest_waiting_study_s_without_an_open_association(db) -> None:
    with db.session() as s:
        assert next_quiet_at(s, 10) is None
        s.add_all([Study(study_uid="1.2.3", state="received", last_received_at=NOW),
                   Study(study_uid="1.2.4", state="received", last_received_at=NOW - timedelta(seconds=3)),
                   Study(study_uid="1.2.5", state="done", last_received_at=NOW - timedelta(seconds=60))])
    with db.session() as s:
        assert next_quiet_at(s, 10) == NOW + timedelta(seconds=7)
        open_association(s, "a1", "MOD", "127.0.0.1", "rx")
        s.flush()
        study = s.query(Study).filter_by(study_uid="1.2.4").one()
        s.add(StudyAssociation(study_id=study.id, association_id="a1"))
    with db.session() as s:  # still being sent: its close decides, not the clock
        assert next_quiet_at(s, 10) == NOW + timedelta(seconds=10)
        close_association(s, "a1")
    with db.session() as s:
        assert next_quiet_at(s, 10) == NOW + timedelta(seconds=7)


@pytest.mark.parametrize(("interval", "quiet_in", "expected"), [
    (1.0, None, 1.0),  # nothing waiting: the interval
    (1.0, 0.3, 0.3 + MIN_PAUSE_SECONDS),  # a study goes quiet sooner: just past then
    (1.0, 5.0, 1.0),  # later than the interval: the interval
    (1.0, -2.0, MIN_PAUSE_SECONDS),  # already due (a sweep failed): at once
    (30.0, 0.5, 0.5 + MIN_PAUSE_SECONDS),
])
def test_pause_until_the_next_sweep(interval, quiet_in, expected) -> None:
    settings = Settings(sweep_interval_seconds=interval)
    at = NOW + timedelta(seconds=quiet_in) if quiet_in is not None else None
    assert pause_seconds(settings, Swept([], [], at), NOW) == pytest.approx(expected)
