"""Retention, applied by the scheduler: image files of long-finished studies, and refused payloads.

Acknowledged means kept. Each study is marked purged, and its files removed, inside one
transaction that holds the study's row (db/retention.py). The receiver indexes an instance and
moves its file into place inside a transaction that takes the same row (db/ingest.py,
worker/receiving.py). So an instance re-sent during a purge either commits first, and the study
no longer qualifies, or waits for the purge to commit, and its file goes into place after the
purge's files are gone, under an index entry the purge never saw.

Refused payloads hold patient data too, and have their own retention (on by default): each
refusal's file goes after CXRTRIAGE_QUARANTINE_RETENTION_DAYS, and its row says so.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from cxrtriage.config import Settings
from cxrtriage.db.retention import (
    Purge,
    claim_purge,
    expired_quarantine,
    mark_quarantine_removed,
    purge_candidates,
)
from cxrtriage.db.session import Database
from cxrtriage.dicom.storage import InstanceStore

logger = logging.getLogger(__name__)
BATCH = 500


def apply_retention(db: Database, settings: Settings, now: datetime | None = None) -> int:
    """One retention pass; returns how many studies were purged."""
    now = now or datetime.now(UTC)
    marked = purge_studies(db, settings.retention_days, now) if settings.retention_days > 0 else 0
    removed = 0
    if settings.quarantine_retention_days > 0:
        removed = remove_expired_quarantine(db, InstanceStore(settings.storage_dir),
                                            settings.quarantine_retention_days, now)
    if marked or removed:
        logger.info("retention applied", extra={"studies_purged": marked, "rejected_removed": removed})
    return marked


def purge_studies(db: Database, retention_days: int, now: datetime, limit: int = BATCH) -> int:
    """Up to `limit` studies per pass, each in its own transaction."""
    with db.session() as session:
        candidates = purge_candidates(session, retention_days, now, limit)
    marked = 0
    for study_id in candidates:
        try:
            with db.session() as session:
                purge = claim_purge(session, study_id, retention_days, now)
                if purge is None:  # it changed since it was listed: an instance arrived, say
                    continue
                remove_files(purge)  # before the commit, while the row is held
            marked += 1
        except OSError as exc:  # rolled back: not marked; retried at the next pass
            logger.warning("retention could not remove a file", extra={"study_id": study_id,
                                                                       "error": type(exc).__name__})
    return marked


def remove_files(purge: Purge) -> None:
    """Remove the files the purge listed. Called before its transaction commits: removed after
    the commit, a path could already hold the same file sent again (same content, same name),
    indexed and put in place by the receiver the moment the row was free."""
    for path in purge.paths:
        Path(path).unlink(missing_ok=True)


def remove_expired_quarantine(db: Database, store: InstanceStore, retention_days: int,
                              now: datetime) -> int:
    """Each refusal's payload older than N days, and its row cleared of the path; then files in
    rejected/ that no row names (their refusal could not be recorded), by age."""
    removed = 0
    with db.session() as session:
        gone = []
        for rejection_id, path in expired_quarantine(session, retention_days, now):
            if Path(path).parent != store.root / "rejected":  # not ours to remove (an older root?)
                logger.warning("quarantine path outside this storage root; left alone",
                               extra={"rejection_id": rejection_id})
                continue
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("quarantine retention could not remove a file",
                               extra={"rejection_id": rejection_id, "error": type(exc).__name__})
                continue
            gone.append(rejection_id)
        removed += mark_quarantine_removed(session, gone, now)
    return removed + store.clean_old_rejected(retention_days * 86400.0)
