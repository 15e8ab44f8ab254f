"""What the reading room asks of the worklist besides a page of it: a study's neighbours in
worklist order under the reader's filters (for next/previous case from the study page), and how
many flagged studies have come in since a worklist page was loaded.

The order is the worklist's (db/review.worklist): tier (flagged; escalated; other analysed; not
analysed), then the flag probability, highest first, then time received and id. Each study has
one key in that order, so a study's neighbours are the nearest keys on either side among the
studies the filters keep, whether or not the study itself is still kept (a verdict takes a study
out of "unreviewed"; its place in the order stays)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cxrtriage.db.models import ModelVersion, Study, as_utc, utcnow
from cxrtriage.db.review import WorklistFilter, _conditions, _probability_by_study, _reviewed
from cxrtriage.domain import StudyState


@dataclass(frozen=True)
class Neighbours:
    """A study's place in the filtered worklist: the studies before and after it (their UIDs, or
    None at either end), its position from 1 (None when the filters no longer keep it) and how
    many studies the filters keep."""

    previous: str | None
    next: str | None
    position: int | None
    total: int


def _keyed(session: Session, f: WorklistFilter, escalate_after: timedelta, now: datetime) -> Any:
    """A subquery of every study with its worklist key (tier, -probability, received, id) and
    whether the filters keep it. The tier is db/review.worklist's, written the same way."""
    prob = _probability_by_study(session)
    escalated = and_(Study.state == StudyState.DONE, Study.flagged.is_not(True), ~_reviewed(),
                     Study.created_at <= now - escalate_after)
    tier = case((Study.state != StudyState.DONE, 3), (Study.flagged.is_(True), 0), (escalated, 1), else_=2)
    conditions = _conditions(f, prob)
    kept: ColumnElement[bool] = and_(*conditions) if conditions else Study.id.is_not(None)
    return (select(Study.id.label("id"), Study.study_uid.label("study_uid"), tier.label("tier"),
                   (-func.coalesce(prob.c.probability, -1.0)).label("rank"),
                   Study.created_at.label("received"), case((kept, 1), else_=0).label("kept"))
            .outerjoin(prob, prob.c.study_id == Study.id)
            .outerjoin(ModelVersion, ModelVersion.id == Study.model_version_id)).subquery()


def neighbours(session: Session, study_uid: str, f: WorklistFilter, escalate_after: timedelta,
               now: datetime | None = None) -> Neighbours | None:
    """The study's neighbours in worklist order under `f` (its page and per_page are ignored);
    None for an unknown study."""
    keyed = _keyed(session, f, escalate_after, now or utcnow())
    key = tuple_(keyed.c.tier, keyed.c.rank, keyed.c.received, keyed.c.id)
    mine = session.execute(select(keyed.c.tier, keyed.c.rank, keyed.c.received, keyed.c.id, keyed.c.kept)
                           .where(keyed.c.study_uid == study_uid)).first()
    if mine is None:
        return None
    here = tuple_(*mine[:4])
    kept = keyed.c.kept == 1
    after = session.scalar(select(keyed.c.study_uid).where(kept, key > here)
                           .order_by(keyed.c.tier, keyed.c.rank, keyed.c.received, keyed.c.id).limit(1))
    before = session.scalar(select(keyed.c.study_uid).where(kept, key < here)
                            .order_by(keyed.c.tier.desc(), keyed.c.rank.desc(), keyed.c.received.desc(),
                                      keyed.c.id.desc()).limit(1))
    counts = session.execute(select(func.count(), func.sum(case((key < here, 1), else_=0)))
                             .select_from(keyed).where(kept)).one()
    total, ahead = int(counts[0] or 0), int(counts[1] or 0)
    return Neighbours(before, after, ahead + 1 if mine.kept else None, total)


def new_flagged_since(session: Session, since: datetime) -> int:
    """Flagged studies whose result came after `since` (a worklist page's load time): new
    arrivals, and studies a newer model read again and flagged."""
    since = as_utc(since)
    return int(session.scalar(select(func.count()).select_from(Study).where(
        Study.flagged.is_(True), Study.state == StudyState.DONE, Study.finished_at > since)) or 0)
