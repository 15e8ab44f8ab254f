"""Public functions that put work on the queue. Other layers (scheduler, web) queue only here."""

from __future__ import annotations

import logging

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches
from cxrtriage.db.session import Database
from cxrtriage.worker.app import EXPORT_QUEUE, app
from cxrtriage.worker.export import dispatch_hold_seconds

logger = logging.getLogger(__name__)


def enqueue_study(study_uid: str) -> None:
    app.send_task("cxrtriage.process_study", args=[study_uid])
    logger.info("study queued", extra={"study_uid": study_uid})


def dispatch_study_exports(db: Database, settings: Settings, study_uid: str) -> int:
    """Send a study's new SR and heatmaps as soon as they are recorded, not at the next sweep;
    returns how many were dispatched. Dispatched before the hold commits: a dispatch that is
    not recorded only costs a duplicate message, which the export claim absorbs."""
    with db.session() as session:
        batches = due_export_batches(session, dispatch_hold_seconds(settings), study_uid=study_uid)
        for batch in batches:
            enqueue_export(batch)
    return sum(map(len, batches))


def enqueue_export(export_ids: list[int]) -> None:
    """Exports sent together, over one association (a study's SR and its heatmaps)."""
    app.send_task("cxrtriage.export_sr", args=[export_ids], queue=EXPORT_QUEUE)
    logger.info("SR export queued", extra={"export_ids": export_ids})
