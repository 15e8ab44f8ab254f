"""Public functions that put work on the queue. Other layers (scheduler, web) queue only here."""

from __future__ import annotations

import logging

from cxrtriage.worker.app import EXPORT_QUEUE, app

logger = logging.getLogger(__name__)


def enqueue_study(study_uid: str) -> None:
    app.send_task("cxrtriage.process_study", args=[study_uid])
    logger.info("study queued", extra={"study_uid": study_uid})


def enqueue_export(export_id: int) -> None:
    app.send_task("cxrtriage.export_sr", args=[export_id], queue=EXPORT_QUEUE)
    logger.info("SR export queued", extra={"export_id": export_id})
