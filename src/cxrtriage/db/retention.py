"""Retention: which finished studies' image files may be removed, marking them purged, and the
refusals whose quarantined payloads have been removed.

Only studies in a final state (done, skipped, failed) that finished, and last received an
instance, more than N days ago are purged. Their SRs, results and rows stay; the study is marked
purged so that reprocessing skips it and never replaces a real SR with "not analysed" for want of
its images.

Acknowledged means kept: a study is marked by a conditional UPDATE that re-checks those
conditions on the row as it is now, and the files it lists are removed before that transaction
commits. The UPDATE holds the study's row (PostgreSQL: a row lock; SQLite: the write lock) until
then, and the receiver's indexing takes the same row (`SELECT ... FOR UPDATE`), so an instance
received meanwhile either commits first, and the study no longer qualifies, or waits until the
files are gone, and is then a new receipt of a study whose files the purge never listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from cxrtriage.db.models import Instance, Rejection, SrExport, Study, utcnow
from cxrtriage.domain import FINISHED, HEATMAP_KINDS, ExportState


@dataclass(frozen=True)
class Purge:
    """A study marked purged in the open transaction, and the files to remove before it commits."""

    study_id: int
    paths: list[str]


def purge_candidates(session: Session, retention_days: int, now: datetime | None = None,
                     limit: int = 500) -> list[int]:
    """Ids of studies that look purgeable; `claim_purge` decides, one study at a time."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    return list(session.scalars(select(Study.id).where(*_purgeable(cutoff))
                                .order_by(Study.id).limit(limit)).all())


def _purgeable(cutoff: datetime) -> tuple:  # type: ignore[type-arg]
    # last_received_at too: the same file re-sent does not change a finished study's state, but
    # it is a receipt, and its file must stay.
    return (Study.state.in_(FINISHED), Study.purged_at.is_(None), Study.finished_at < cutoff,
            or_(Study.last_received_at.is_(None), Study.last_received_at < cutoff))


def claim_purge(session: Session, study_id: int, retention_days: int,
                now: datetime | None = None) -> Purge | None:
    """Mark one study purged if it still qualifies, holding its row until the session ends, and
    list its image files (instances, and heatmaps no longer waiting to be sent). None when it no
    longer qualifies (an instance arrived, it was reprocessed, or another scheduler took it)."""
    now = now or utcnow()
    result = session.execute(update(Study).where(Study.id == study_id,
                                                 *_purgeable(now - timedelta(days=retention_days)))
                             .values(purged_at=now).execution_options(synchronize_session=False))
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    paths = list(session.scalars(select(Instance.path).where(Instance.study_id == study_id)).all())
    paths += session.scalars(select(SrExport.path).where(
        SrExport.study_id == study_id, SrExport.kind.in_(HEATMAP_KINDS),
        SrExport.state != ExportState.PENDING)).all()
    return Purge(study_id, paths)


def expired_quarantine(session: Session, retention_days: int, now: datetime | None = None,
                       limit: int = 500) -> list[tuple[int, str]]:
    """(rejection id, quarantine path) of refusals older than N days whose payload is still kept."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    return [(r.id, r.path) for r in session.execute(
        select(Rejection.id, Rejection.quarantine_path.label("path")).where(
            Rejection.quarantine_path.is_not(None), Rejection.created_at < cutoff)
        .order_by(Rejection.id).limit(limit)).all()]


def mark_quarantine_removed(session: Session, rejection_ids: list[int], now: datetime | None = None) -> int:
    """The payload is gone: the row keeps its status and reason, loses the path, and says when."""
    if not rejection_ids:
        return 0
    result = session.execute(update(Rejection).where(Rejection.id.in_(rejection_ids))
                             .values(quarantine_path=None, quarantine_removed_at=now or utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
