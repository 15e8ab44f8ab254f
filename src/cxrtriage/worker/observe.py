"""The worker's metrics, fed by Celery's task signals, so the tasks and the pipeline stay as they
are: timing around each task, and afterwards what the database recorded (final state, images
classified with which model, SR sent) for the latency histograms and counters.

End-to-end latencies are observed for a study's first reading only: a reprocessed study's last
instance arrived days ago, and would swamp the histogram that tells how fast new studies go."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery.signals import task_postrun, task_prerun

from cxrtriage.db.models import utcnow
from cxrtriage.db.operations import export_timing, study_timing
from cxrtriage.domain import ExportState
from cxrtriage.worker.monitoring import Stopwatch, WorkerMetrics
from cxrtriage.worker.runtime import runtime

logger = logging.getLogger(__name__)
PROCESS_TASK = "cxrtriage.process_study"
EXPORT_TASK = "cxrtriage.export_sr"
_EXPORT_OUTCOMES = {ExportState.SENT: "sent", ExportState.PENDING: "retry", ExportState.FAILED: "failed"}

_metrics: WorkerMetrics | None = None
_watch = Stopwatch()
_wall: dict[str, datetime] = {}


def install(metrics: WorkerMetrics) -> None:
    """Start feeding `metrics` from this process's tasks (solo and threads pools)."""
    global _metrics
    _metrics = metrics


@task_prerun.connect
def _started(task_id: str | None = None, **_: Any) -> None:
    if _metrics is None or not task_id:
        return
    _metrics.in_progress.inc()
    _watch.start(task_id)
    _wall[task_id] = utcnow()


@task_postrun.connect
def _finished(task_id: str | None = None, task: Any = None, args: Any = None, retval: Any = None,
              state: str | None = None, **_: Any) -> None:
    if _metrics is None or not task_id:
        return
    _metrics.in_progress.dec()
    seconds = _watch.stop(task_id)
    started = _wall.pop(task_id, utcnow())
    name = getattr(task, "name", "")
    try:
        if state != "SUCCESS":
            _metrics.task_errors.labels(task=name).inc()
            if name == EXPORT_TASK:
                _metrics.export_attempts.labels(outcome="error").inc()
        elif name == PROCESS_TASK and isinstance(retval, dict):  # the studies of one batch
            if retval and seconds is not None:
                _metrics.processing.observe(seconds)
            for study_uid, study_state in retval.items():
                if study_state is not None:
                    _observe_study(_metrics, study_uid, started)
        elif name == EXPORT_TASK and args and isinstance(retval, list):
            ids = args[0] if isinstance(args[0], list) else [args[0]]
            for export_id, outcome in zip(ids, retval, strict=False):
                if outcome in _EXPORT_OUTCOMES:
                    _observe_export(_metrics, int(export_id))
    except Exception:  # metrics never fail a task
        logger.warning("could not record task metrics", extra={"task": name}, exc_info=True)


def _observe_study(metrics: WorkerMetrics, study_uid: str, started: datetime) -> None:
    with runtime().db.session() as session:
        timing = study_timing(session, study_uid, started)
    if timing is None:
        return
    metrics.studies.labels(state=timing.state).inc()
    if timing.model_name and timing.images_classified:
        metrics.classified.labels(model=timing.model_name, version=timing.model_version).inc(
            timing.images_classified)
    if timing.first_reading and timing.finished_at and timing.last_received_at:
        metrics.result_latency.observe(max(0.0, (timing.finished_at - timing.last_received_at)
                                           .total_seconds()))


def _observe_export(metrics: WorkerMetrics, export_id: int) -> None:
    with runtime().db.session() as session:
        found = export_timing(session, export_id)
    if found is None:
        return
    metrics.export_attempts.labels(outcome=_EXPORT_OUTCOMES.get(ExportState(found.state), found.state)).inc()
    if found.state == ExportState.SENT and found.first_report and found.sent_at and found.last_received_at:
        metrics.sr_latency.observe(max(0.0, (found.sent_at - found.last_received_at).total_seconds()))
