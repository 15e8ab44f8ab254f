"""The scheduler: turns database state into queue messages.

Every sweep it queues studies that went quiet, re-dispatches studies whose worker died or whose
message was lost, dispatches due SR exports, and once a night requeues studies for a new model.
It sweeps at the interval, and also at the moment the next study becomes quiet, or when the
receiver beside it wakes it (an association closed), so a study is queued when it goes quiet,
not at the next tick.

Several schedulers may run at once, and that is harmless (each `cxrtriage receiver` runs one
unless started with --no-scheduler): every study and export transition is a conditional update,
so a study is queued by one sweep only, and the nightly job takes a lock in the database (a
unique (job, date) row), so it runs once per night across the deployment. A redundant dispatch
that slips through (a stale study re-sent by two schedulers) is absorbed by the worker's claim.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches
from cxrtriage.db.ingest import expire_associations
from cxrtriage.db.operations import (
    ReprocessSelection,
    claim_run,
    finish_run,
    pending_exports,
    select_for_reprocessing,
    waiting_counts,
)
from cxrtriage.db.session import Database
from cxrtriage.db.studies import next_quiet_at, queue_quiet_studies, requeue_abandoned
from cxrtriage.worker.app import STUDY_QUEUES
from cxrtriage.worker.dispatch import Dispatcher
from cxrtriage.worker.export import dispatch_hold_seconds
from cxrtriage.worker.monitoring import SchedulerMetrics
from cxrtriage.worker.reprocessing import Pace, requeue_paced, serving_model
from cxrtriage.worker.retention import apply_retention

logger = logging.getLogger(__name__)
RETENTION_INTERVAL_SECONDS = 3600.0
MIN_PAUSE_SECONDS = 0.01  # also the margin past a quiet time, so the study is quiet when swept
MIN_SWEEP_GAP_SECONDS = 0.1  # a burst of wake-ups (many associations closing) sweeps this often at most


@dataclass(frozen=True)
class Swept:
    """What one sweep dispatched, and when the next study goes quiet (None: none waiting)."""

    studies: list[str]
    exports: list[list[int]]  # a batch per study
    next_quiet_at: datetime | None


def sweep(db: Database, settings: Settings, dispatcher: Dispatcher) -> Swept:
    """One pass."""
    with db.session() as session:
        expired = expire_associations(session, settings.association_liveness_seconds)
    if expired:
        logger.warning("associations expired: their receiver stopped vouching for them",
                       extra={"associations": expired})
    with db.session() as session:
        studies = queue_quiet_studies(session, settings.study_quiet_seconds,
                                      max_hold_seconds=settings.max_association_hold_seconds)
        studies += requeue_abandoned(session, settings.processing_lease_seconds)
        exports = due_export_batches(session, hold_seconds=dispatch_hold_seconds(settings))
        quiet_at = next_quiet_at(session, settings.study_quiet_seconds,
                                 settings.max_association_hold_seconds)
    for uid in studies:
        dispatcher.study(uid)
    for batch in exports:
        dispatcher.exports(batch)
    return Swept(studies, exports, quiet_at)


def pause_seconds(settings: Settings, swept: Swept | None, now: datetime) -> float:
    """Until the next sweep: the interval, or less when a study goes quiet sooner."""
    pause = settings.sweep_interval_seconds
    if swept is not None and swept.next_quiet_at is not None:
        pause = min(pause, (swept.next_quiet_at - now).total_seconds() + MIN_PAUSE_SECONDS)
    return max(pause, MIN_PAUSE_SECONDS)


NIGHTLY_JOB = "nightly-reprocess"


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def nightly_reprocess(db: Database, settings: Settings, dispatcher: Dispatcher, run_key: str,
                      stop: threading.Event, metrics: SchedulerMetrics | None = None) -> int | None:
    """Tonight's reprocessing, run by exactly one scheduler of however many are running: the
    first to insert the (job, run_key) row holds the lock. None when another scheduler holds it."""
    with db.session() as session:
        run_id = claim_run(session, NIGHTLY_JOB, run_key, holder_name())
    if run_id is None:
        logger.info("nightly reprocessing held by another scheduler", extra={"run_key": run_key})
        if metrics:
            metrics.nightly.labels(outcome="held_elsewhere").inc()
        return None
    queued, outcome = 0, "failed"
    try:
        model_id, model = serving_model(db, settings)
        with db.session() as session:
            uids = select_for_reprocessing(session, ReprocessSelection(not_read_by=(model_id,)))
        advance = (lambda n: metrics.dispatched.labels(kind="reprocess").inc(n)) if metrics else None
        queued = requeue_paced(db, uids, model, Pace.from_settings(settings), stop, advance=advance,
                               enqueue=dispatcher.bulk_study)
        outcome = "stopped" if stop.is_set() else "ran"
        return queued
    finally:
        with db.session() as session:
            finish_run(session, run_id, queued, outcome)
        if metrics:
            metrics.nightly.labels(outcome=outcome).inc()


def refresh_gauges(db: Database, dispatcher: Dispatcher, metrics: SchedulerMetrics) -> None:
    """Queue depth from the broker, waiting studies and the export backlog from the database."""
    with db.session() as session:
        for state, count in waiting_counts(session).items():
            metrics.studies_waiting.labels(state=state).set(count)
        metrics.exports_pending.set(pending_exports(session))
    for queue in STUDY_QUEUES:
        metrics.queue_depth.labels(queue=queue).set(dispatcher.queue_depth(queue))


def _pause(stop: threading.Event, wake: threading.Event, seconds: float, earliest: float) -> None:
    """Wait `seconds`, or until woken or stopped (stop is looked at every half second); in any
    case until the monotonic time `earliest`, so that wake-ups cannot make the sweeps spin."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        if wake.wait(min(left, 0.5)):
            break
    stop.wait(max(0.0, earliest - time.monotonic()))


def run_scheduler(settings: Settings, stop: threading.Event, metrics: SchedulerMetrics | None = None,
                  gauge_interval_seconds: float = 5.0, wake: threading.Event | None = None,
                  dispatcher: Dispatcher | None = None) -> None:
    """Sweep until `stop`; `wake` (set by the receiver beside it) starts the next sweep early.
    Tasks go out through `dispatcher` (by default, one made from `settings`)."""
    db = Database(settings.database_url)
    dispatcher = dispatcher or Dispatcher.for_settings(settings)
    wake = wake or threading.Event()
    last_nightly: date | None = None
    nightly: threading.Thread | None = None
    last_gauges = 0.0
    last_retention = float("-inf")  # retention: a pass at start, then hourly
    while not stop.is_set():
        started = time.monotonic()
        swept = None
        wake.clear()  # before the sweep: a wake-up during it starts the next one at once
        try:
            swept = sweep(db, settings, dispatcher)
            if metrics:
                metrics.dispatched.labels(kind="study").inc(len(swept.studies))
                metrics.dispatched.labels(kind="export").inc(sum(map(len, swept.exports)))
            if started - last_retention > RETENTION_INTERVAL_SECONDS:
                last_retention = started
                apply_retention(db, settings)
            now = datetime.now()
            if (settings.nightly_reprocess_hour == now.hour and last_nightly != now.date()
                    and not (nightly and nightly.is_alive())):
                last_nightly = now.date()
                nightly = threading.Thread(target=nightly_reprocess, name="nightly-reprocess",
                                           args=(db, settings, dispatcher, now.date().isoformat(), stop,
                                                 metrics),
                                           daemon=True)
                nightly.start()
        except Exception:  # the scheduler must outlive a broker or database outage
            logger.exception("scheduler sweep failed; retrying")
            if metrics:
                metrics.sweep_errors.inc()
        if metrics:
            metrics.sweep_seconds.observe(time.monotonic() - started)
            if started - last_gauges >= gauge_interval_seconds:
                last_gauges = started
                try:
                    refresh_gauges(db, dispatcher, metrics)
                except Exception:  # a gauge left stale never stops the sweeps
                    logger.warning("metrics refresh failed", exc_info=True)
        _pause(stop, wake, pause_seconds(settings, swept, datetime.now(UTC)), started + MIN_SWEEP_GAP_SECONDS)
    if nightly is not None:
        nightly.join(timeout=10)
