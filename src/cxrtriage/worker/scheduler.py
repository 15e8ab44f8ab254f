"""The scheduler: turns database state into queue messages.

Every sweep it queues studies that went quiet, re-dispatches studies whose worker died or whose
message was lost, dispatches due SR exports, and once a night requeues studies for a new model.
Several schedulers may run at once: every transition is a conditional update.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_exports
from cxrtriage.db.ingest import expire_associations
from cxrtriage.db.results import register_model
from cxrtriage.db.retention import mark_purged, purge_candidates
from cxrtriage.db.session import Database
from cxrtriage.db.studies import mark_for_reprocessing, queue_quiet_studies, requeue_abandoned
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.worker.dispatch import enqueue_export, enqueue_study
from cxrtriage.worker.export import dispatch_hold_seconds

logger = logging.getLogger(__name__)
RETENTION_INTERVAL_SECONDS = 3600.0


def sweep(db: Database, settings: Settings) -> tuple[list[str], list[int]]:
    """One pass; returns what it dispatched."""
    with db.session() as session:
        expired = expire_associations(session, settings.association_liveness_seconds)
    if expired:
        logger.warning("associations expired: their receiver stopped vouching for them",
                       extra={"associations": expired})
    with db.session() as session:
        studies = queue_quiet_studies(session, settings.study_quiet_seconds)
        studies += requeue_abandoned(session, settings.processing_lease_seconds)
        exports = due_exports(session, hold_seconds=dispatch_hold_seconds(settings))
    for uid in studies:
        enqueue_study(uid)
    for export_id in exports:
        enqueue_export(export_id)
    return studies, exports


def apply_retention(db: Database, settings: Settings, now: datetime | None = None) -> int:
    """Remove image files of studies finished more than RETENTION_DAYS ago; keep SRs and results.
    Files go first, then the mark: a crash in between leaves a study to be purged again."""
    if settings.retention_days <= 0:
        return 0
    with db.session() as session:
        candidates = purge_candidates(session, settings.retention_days, now)
    purged = []
    for study_id, paths in candidates.items():
        try:
            for path in paths:
                Path(path).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("retention could not remove a file", extra={"study_id": study_id,
                                                                       "error": type(exc).__name__})
            continue
        purged.append(study_id)
    with db.session() as session:
        marked = mark_purged(session, purged)
    store = InstanceStore(settings.storage_dir)
    removed = store.clean_old_rejected(settings.retention_days * 86400.0)
    if marked or removed:
        logger.info("retention applied", extra={"studies_purged": marked, "rejected_removed": removed})
    return marked


def reprocess_for_current_model(db: Database, settings: Settings) -> list[str]:
    """Queue every finished study not yet read by the configured model."""
    from cxrtriage.models.package import read_manifest  # torch: only when reprocessing

    manifest = read_manifest(settings.model)
    with db.session() as session:
        model_id = register_model(session, manifest.model_info(), asdict(manifest))
        uids = mark_for_reprocessing(session, model_id)
    for uid in uids:
        enqueue_study(uid)
    logger.info("reprocessing queued", extra={"studies": len(uids), "model_version": manifest.version})
    return uids


def run_scheduler(settings: Settings, stop: threading.Event) -> None:
    db = Database(settings.database_url)
    last_nightly: date | None = None
    last_retention = 0.0
    while not stop.is_set():
        try:
            sweep(db, settings)
            if time.monotonic() - last_retention > RETENTION_INTERVAL_SECONDS:
                last_retention = time.monotonic()
                apply_retention(db, settings)
            now = datetime.now()
            if settings.nightly_reprocess_hour == now.hour and last_nightly != now.date():
                last_nightly = now.date()
                reprocess_for_current_model(db, settings)
        except Exception:  # the scheduler must outlive a broker or database outage
            logger.exception("scheduler sweep failed; retrying")
        stop.wait(settings.sweep_interval_seconds)
