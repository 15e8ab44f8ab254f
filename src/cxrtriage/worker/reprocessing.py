"""Bulk reprocessing: reading finished studies again, with the serving model, without starving
daytime traffic.

The database stays the source of truth. Studies are selected first, then requeued one at a time
(a conditional update, committed before the message is sent) at a capped rate, and held back
while the queue already has `max_in_flight` studies queued or processing - live studies as well
as earlier bulk ones. So a bulk run never puts more than a handful of studies ahead of a study
that has just arrived, whatever the broker does with queue order, and a run that is stopped
leaves nothing half-queued: what was not requeued is still selected by the next run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from cxrtriage.config import Settings
from cxrtriage.db.operations import count_in_flight, requeue_finished
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database
from cxrtriage.domain import FINISHED, ModelInfo

logger = logging.getLogger(__name__)
REASON = "reprocessing with model {name} {version}"


@dataclass(frozen=True)
class Pace:
    rate_per_second: float = 2.0  # at most this many studies requeued per second
    max_in_flight: int = 4  # wait while this many studies are queued or processing; 0: no cap
    poll_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Pace:
        return cls(settings.reprocess_rate_per_second, settings.reprocess_max_queued)


def serving_model(db: Database, settings: Settings) -> tuple[int, ModelInfo]:
    """The configured model package, registered in the database; its id and provenance."""
    from cxrtriage.models.manifest import read_manifest

    manifest = read_manifest(settings.model)
    with db.session() as session:
        model_id = register_model(session, manifest.model_info(), asdict(manifest))
    return model_id, manifest.model_info()


def requeue_paced(db: Database, study_uids: Sequence[str], model: ModelInfo, pace: Pace,
                  stop: threading.Event | None = None,
                  advance: Callable[[int], object] | None = None,
                  states: tuple[str, ...] = tuple(FINISHED), *,
                  enqueue: Callable[[str], None]) -> int:
    """Requeue and dispatch (`enqueue`, a Dispatcher's `study`) the given studies at the pace;
    returns how many were queued.
    Studies that are no longer finished (new images arrived meanwhile) are passed over."""
    stop = stop or threading.Event()
    reason = REASON.format(name=model.name, version=model.version)
    interval = 1.0 / pace.rate_per_second
    queued, last = 0, 0.0
    for uid in study_uids:
        while pace.max_in_flight and not stop.is_set():
            with db.session() as session:
                if count_in_flight(session) < pace.max_in_flight:
                    break
            stop.wait(pace.poll_seconds)
        stop.wait(max(0.0, last + interval - time.monotonic()))
        if stop.is_set():
            break
        last = time.monotonic()
        with db.session() as session:
            requeued = requeue_finished(session, uid, states, reason)
        if requeued:  # committed before the message exists, so the worker's claim finds it
            enqueue(uid)
            queued += 1
        if advance is not None:
            advance(1)
    logger.info("reprocessing queued", extra={"studies": queued, "selected": len(study_uids),
                                              "model_version": model.version})
    return queued
