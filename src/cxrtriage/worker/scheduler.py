"""The scheduler: turns database state into queue messages.

Every sweep it queues studies that went quiet, re-dispatches studies whose worker died or whose
message was lost, dispatches due SR exports, and once a night requeues studies for a new model.
Several schedulers may run at once: every transition is a conditional update.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from datetime import date, datetime

from cxrtriage.config import Settings
from cxrtriage.db.results import due_exports, register_model
from cxrtriage.db.session import Database
from cxrtriage.db.studies import mark_for_reprocessing, queue_quiet_studies, requeue_abandoned
from cxrtriage.worker.dispatch import enqueue_export, enqueue_study

logger = logging.getLogger(__name__)


def sweep(db: Database, settings: Settings) -> tuple[list[str], list[int]]:
    """One pass; returns what it dispatched."""
    with db.session() as session:
        studies = queue_quiet_studies(session, settings.study_quiet_seconds)
        studies += requeue_abandoned(session, settings.processing_lease_seconds)
        exports = due_exports(session, hold_seconds=120.0)
    for uid in studies:
        enqueue_study(uid)
    for export_id in exports:
        enqueue_export(export_id)
    return studies, exports


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
    while not stop.is_set():
        try:
            sweep(db, settings)
            now = datetime.now()
            if settings.nightly_reprocess_hour == now.hour and last_nightly != now.date():
                last_nightly = now.date()
                reprocess_for_current_model(db, settings)
        except Exception:  # the scheduler must outlive a broker or database outage
            logger.exception("scheduler sweep failed; retrying")
        stop.wait(settings.sweep_interval_seconds)
