"""Public functions that put work on the queue. Other layers (scheduler, web, cli) queue only
through a `Dispatcher`, built once from the settings and passed down."""

from __future__ import annotations

import logging

from celery import Celery

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches
from cxrtriage.db.session import Database
from cxrtriage.worker.app import (
    BULK_QUEUE,
    EXPORT_QUEUE,
    EXPORT_SR_TASK,
    PROCESS_STUDY_TASK,
    QUEUE,
    configure_app,
)
from cxrtriage.worker.export import dispatch_hold_seconds

logger = logging.getLogger(__name__)
# The review app's work (web/): a "try an image" request, and a verdict's assessment SR. Both go
# to the study queue: its workers hold the model, and a verdict's SR is a moment's work.
CLASSIFY_TRIAL_TASK = "cxrtriage.classify_trial"
WRITE_ASSESSMENT_TASK = "cxrtriage.write_assessment"


class Dispatcher:
    """Sends tasks through one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def for_settings(cls, settings: Settings) -> Dispatcher:
        return cls(configure_app(settings))

    def study(self, study_uid: str) -> None:
        """A live study (it went quiet, or its worker died)."""
        self.app.send_task(PROCESS_STUDY_TASK, args=[study_uid], queue=QUEUE)
        logger.info("study queued", extra={"study_uid": study_uid})

    def bulk_study(self, study_uid: str) -> None:
        """A study requeued by bulk reprocessing, on its own queue: a worker consuming both takes
        them in turn, so a live message never waits behind a backlog of bulk ones, and its
        batch takes live studies first (`ready_studies`)."""
        self.app.send_task(PROCESS_STUDY_TASK, args=[study_uid], queue=BULK_QUEUE)
        logger.info("study queued for reprocessing", extra={"study_uid": study_uid})

    def exports(self, export_ids: list[int]) -> None:
        """Exports sent together, over one association (a study's SR and its heatmaps)."""
        self.app.send_task(EXPORT_SR_TASK, args=[export_ids], queue=EXPORT_QUEUE)
        logger.info("SR export queued", extra={"export_ids": export_ids})

    def study_exports(self, db: Database, settings: Settings, study_uid: str) -> int:
        """Send a study's new SR and heatmaps as soon as they are recorded, not at the next
        sweep; returns how many were dispatched. Dispatched before the hold commits: a dispatch
        that is not recorded only costs a duplicate message, which the export claim absorbs."""
        with db.session() as session:
            batches = due_export_batches(session, dispatch_hold_seconds(settings), study_uid=study_uid)
            for batch in batches:
                self.exports(batch)
        return sum(map(len, batches))

    def queue_depth(self, queue: str = QUEUE) -> int:
        """Messages waiting on a queue."""
        with self.app.connection_for_read() as connection:
            # kombu's virtual-transport size (Redis: the list lengths over priority levels;
            # filesystem: the message files). A passive queue_declare fails on an empty Redis queue.
            return int(connection.default_channel._size(queue))

    def trial(self, trial_id: int) -> None:
        """A "try an image" request recorded by the review app (db/trials.py)."""
        self.app.send_task(CLASSIFY_TRIAL_TASK, args=[trial_id], queue=QUEUE)
        logger.info("trial queued", extra={"trial_id": trial_id})

    def assessment(self, feedback_event_id: int) -> None:
        """The assessment SR of the verdict recorded as this audit event (worker/assessment.py)."""
        self.app.send_task(WRITE_ASSESSMENT_TASK, args=[feedback_event_id], queue=QUEUE)
        logger.info("assessment SR queued", extra={"event_id": feedback_event_id})
