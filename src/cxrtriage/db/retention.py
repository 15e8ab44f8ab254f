"""Retention: which finished studies' image files may be removed, and marking them purged.

Only studies in a final state (done, skipped, failed) that finished more than N days ago are
purged. Their SRs, results and rows stay; the study is marked purged so that reprocessing skips it
and never replaces a real SR with "not analysed" for want of its images.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cxrtriage.db.models import Instance, SrExport, Study, utcnow
from cxrtriage.domain import ExportKind, ExportState, StudyState

FINAL_STATES = (StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED)


def purge_candidates(session: Session, retention_days: int, now: datetime | None = None,
                     limit: int = 500) -> dict[int, list[str]]:
    """Study id -> image file paths (instances, and heatmaps no longer waiting to be sent)."""
    now = now or utcnow()
    ids = list(session.scalars(select(Study.id).where(
        Study.state.in_(FINAL_STATES), Study.purged_at.is_(None),
        Study.finished_at < now - timedelta(days=retention_days)).order_by(Study.id).limit(limit)).all())
    paths: dict[int, list[str]] = {study_id: [] for study_id in ids}
    if not ids:
        return paths
    for study_id, path in session.execute(select(Instance.study_id, Instance.path)
                                          .where(Instance.study_id.in_(ids))).all():
        paths[study_id].append(path)
    for study_id, path in session.execute(select(SrExport.study_id, SrExport.path).where(
            SrExport.study_id.in_(ids), SrExport.kind == ExportKind.HEATMAP,
            SrExport.state != ExportState.PENDING)).all():
        paths[study_id].append(path)
    return paths


def mark_purged(session: Session, study_ids: list[int], now: datetime | None = None) -> int:
    """Mark studies purged, if they are still final (a new instance may have arrived meanwhile)."""
    if not study_ids:
        return 0
    result = session.execute(update(Study).where(Study.id.in_(study_ids), Study.state.in_(FINAL_STATES))
                             .values(purged_at=now or utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
