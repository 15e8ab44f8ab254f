"""The worker's metrics, fed by Celery's task signals, so the tasks and the pipeline stay as they
are: timing around each task, and afterwards what the database recorded (final state, images
classified with which model, SR sent) for the latency histograms and counters.

End-to-end latencies are observed for a study's first reading only: a reprocessed study's last
instance arrived days ago, and would swamp the histogram that tells how fast new studies go."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.signals import task_postrun, task_prerun

from cxrtriage.db.operations import export_timing, study_timing
from cxrtriage.db.session import Database
from cxrtriage.domain import ExportState
from cxrtriage.worker.app import EXPORT_SR_TASK, PROCESS_STUDY_TASK
from cxrtriage.worker.monitoring import Stopwatch, WorkerMetrics

logger = logging.getLogger(__name__)
_EXPORT_OUTCOMES = {ExportState.SENT: "sent", ExportState.PENDING: "retry", ExportState.FAILED: "failed"}


class TaskObserver:
    """Feeds one process's metrics from its tasks' signals (solo and threads pools)."""

    def __init__(self, metrics: WorkerMetrics, db: Database) -> None:
        self.metrics, self.db = metrics, db
        self._watch = Stopwatch()
        self._wall: dict[str, datetime] = {}

    def started(self, task_id: str | None = None, **_: Any) -> None:
        if not task_id:
            return
        self.metrics.in_progress.inc()
        self._watch.start(task_id)
        self._wall[task_id] = datetime.now(UTC)

    def finished(self, task_id: str | None = None, task: Any = None, args: Any = None, retval: Any = None,
                 state: str | None = None, **_: Any) -> None:
        if not task_id:
            return
        metrics = self.metrics
        metrics.in_progress.dec()
        seconds = self._watch.stop(task_id)
        started = self._wall.pop(task_id, datetime.now(UTC))
        name = getattr(task, "name", "")
        try:
            if state != "SUCCESS":
                metrics.task_errors.labels(task=name).inc()
                if name == EXPORT_SR_TASK:
                    metrics.export_attempts.labels(outcome="error").inc()
            elif name == PROCESS_STUDY_TASK and isinstance(retval, dict):  # the studies of one batch
                if retval and seconds is not None:
                    metrics.processing.observe(seconds)
                for study_uid, study_state in retval.items():
                    if study_state is not None:
                        self._observe_study(study_uid, started)
            elif name == EXPORT_SR_TASK and args and isinstance(retval, list):
                ids = args[0] if isinstance(args[0], list) else [args[0]]
                for export_id, outcome in zip(ids, retval, strict=False):
                    if outcome in _EXPORT_OUTCOMES:
                        self._observe_export(int(export_id))
        except Exception:  # metrics never fail a task
            logger.warning("could not record task metrics", extra={"task": name}, exc_info=True)

    def _observe_study(self, study_uid: str, started: datetime) -> None:
        with self.db.session() as session:
            timing = study_timing(session, study_uid, started)
        if timing is None:
            return
        metrics = self.metrics
        metrics.studies.labels(state=timing.state).inc()
        if timing.model_name and timing.images_classified:
            metrics.classified.labels(model=timing.model_name, version=timing.model_version).inc(
                timing.images_classified)
        if timing.first_reading and timing.finished_at and timing.last_received_at:
            metrics.result_latency.observe(max(0.0, (timing.finished_at - timing.last_received_at)
                                               .total_seconds()))

    def _observe_export(self, export_id: int) -> None:
        with self.db.session() as session:
            found = export_timing(session, export_id)
        if found is None:
            return
        outcome = _EXPORT_OUTCOMES.get(ExportState(found.state), found.state)
        self.metrics.export_attempts.labels(outcome=outcome).inc()
        if (found.state == ExportState.SENT and found.first_report and found.sent_at
                and found.last_received_at):
            self.metrics.sr_latency.observe(max(0.0, (found.sent_at - found.last_received_at)
                                                .total_seconds()))


def install(metrics: WorkerMetrics, db: Database) -> TaskObserver:
    """Start feeding `metrics` from this process's tasks."""
    observer = TaskObserver(metrics, db)
    task_prerun.connect(observer.started, weak=False)
    task_postrun.connect(observer.finished, weak=False)
    return observer
