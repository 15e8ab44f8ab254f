"""Per-process Prometheus metrics for the receiver, the worker and the scheduler.

Each long-running process serves its own prometheus-client endpoint on CXRTRIAGE_METRICS_PORT
(0 turns it off). Names start with `cxrtriage_receiver_`, `cxrtriage_worker_` or
`cxrtriage_scheduler_`; the review app's DB-derived metrics use other names, so a dashboard can
scrape both without collisions.

No metric and no label carries patient data: labels are DICOM status codes, study states, export
outcomes, and model names and versions - all values this program chose, never values a sender sent.
The receiver's metrics reach the pure DICOM layer as a wrapper around its index (MeteredIndex),
so `dicom/` imports nothing from here.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from cxrtriage.dicom.receiver import ReceiverIndex
from cxrtriage.domain import RefusedInstance, StoredInstance
from cxrtriage.errors import InstanceConflictError

logger = logging.getLogger(__name__)

# Seconds. A study on a GPU takes about a second; on a CPU a few; a quiet period comes before it.
PROCESSING_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


def new_registry() -> CollectorRegistry:
    """A registry with the process collector (CPU, memory, open files) and nothing global."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def free_bytes(path: Path) -> float:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return float(shutil.disk_usage(candidate).free)
    return float("nan")


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any | None:
    """Start the HTTP endpoint (a daemon thread); None when the port is 0."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics endpoint listening", extra={"host": host, "port": port})
    return server


def free_space_gauge(name: str, documentation: str, registry: CollectorRegistry, storage_dir: Path) -> Gauge:
    """A gauge read at scrape time: free bytes on the volume that holds `storage_dir`."""
    root = Path(storage_dir).resolve()
    gauge = Gauge(name, documentation, registry=registry)
    gauge.set_function(lambda: free_bytes(root))
    return gauge


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry, storage_dir: Path) -> None:
        self.received = Counter("cxrtriage_receiver_instances_received",
                                "Instances stored and indexed (answered with success)", registry=registry)
        self.refused = Counter("cxrtriage_receiver_instances_refused",
                               "Instances refused at C-STORE, by DICOM status", ["status"], registry=registry)
        self.received_bytes = Counter("cxrtriage_receiver_received_bytes",
                                      "Bytes of stored instances", registry=registry)
        self.associations = Counter("cxrtriage_receiver_associations",
                                    "Associations accepted", registry=registry)
        self.associations_open = Gauge("cxrtriage_receiver_associations_open",
                                       "Associations open now", registry=registry)
        self.storage_free = free_space_gauge("cxrtriage_receiver_storage_free_bytes",
                                             "Free space where instances are stored", registry, storage_dir)


class MeteredIndex:
    """A ReceiverIndex that counts what passes through it on the way to the real index."""

    def __init__(self, inner: ReceiverIndex, metrics: ReceiverMetrics) -> None:
        self.inner, self.metrics = inner, metrics
        # The receiver may report one close more than once (released, then connection closed, or
        # a retried write), so the gauge follows a set of ids rather than counting calls.
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def _set_open(self) -> None:
        self.metrics.associations_open.set(len(self._open))

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        self.inner.association_opened(association_id, calling_ae, peer)
        with self._lock:
            if association_id not in self._open:
                self.metrics.associations.inc()
                self._open.add(association_id)
            self._set_open()

    def association_closed(self, association_id: str) -> None:
        self.inner.association_closed(association_id)
        with self._lock:
            self._open.discard(association_id)
            self._set_open()

    def associations_alive(self, association_ids: list[str]) -> None:
        self.inner.associations_alive(association_ids)

    def instance_stored(self, stored: StoredInstance, place: Callable[[], None]) -> None:
        try:
            self.inner.instance_stored(stored, place)
        except InstanceConflictError:  # refused and counted through instance_rejected
            raise
        except Exception:  # the receiver answers 0xA700 when indexing fails
            self.metrics.refused.labels(status="0xA700").inc()
            raise
        self.metrics.received.inc()
        self.metrics.received_bytes.inc(stored.size_bytes)

    def instance_rejected(self, refused: RefusedInstance) -> None:
        self.metrics.refused.labels(status=f"0x{refused.status:04X}").inc()
        self.inner.instance_rejected(refused)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, storage_dir: Path) -> None:
        self.processing = Histogram("cxrtriage_worker_processing_seconds",
                                    "Time one process_study task took (claim to recorded result)",
                                    buckets=PROCESSING_BUCKETS, registry=registry)
        self.result_latency = Histogram(
            "cxrtriage_worker_result_latency_seconds",
            "End to end: last instance received to result recorded (includes the quiet period)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.sr_latency = Histogram(
            "cxrtriage_worker_sr_latency_seconds",
            "End to end: last instance received to the SR accepted by the destination",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.studies = Counter("cxrtriage_worker_studies_processed",
                               "Studies whose result was recorded, by final state", ["state"],
                               registry=registry)
        self.classified = Counter("cxrtriage_worker_images_classified",
                                  "Images classified, by model name and version", ["model", "version"],
                                  registry=registry)
        self.export_attempts = Counter("cxrtriage_worker_sr_export_attempts",
                                       "SR and heatmap export attempts, by outcome (sent, retry, "
                                       "failed, error)", ["outcome"], registry=registry)
        self.task_errors = Counter("cxrtriage_worker_task_errors",
                                   "Tasks that raised, by task name", ["task"], registry=registry)
        self.in_progress = Gauge("cxrtriage_worker_tasks_in_progress", "Tasks running now",
                                 registry=registry)
        self.storage_free = free_space_gauge("cxrtriage_worker_storage_free_bytes",
                                             "Free space where instances and SRs are stored",
                                             registry, storage_dir)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry, storage_dir: Path) -> None:
        self.queue_depth = Gauge("cxrtriage_scheduler_queue_depth",
                                 "Messages waiting in the broker queue", ["queue"], registry=registry)
        self.studies_waiting = Gauge("cxrtriage_scheduler_studies_waiting",
                                     "Studies not yet finished, by state (database)", ["state"],
                                     registry=registry)
        self.exports_pending = Gauge("cxrtriage_scheduler_exports_pending",
                                     "Exports still to be sent (the export backlog)", registry=registry)
        self.dispatched = Counter("cxrtriage_scheduler_dispatched",
                                  "Messages put on the queue, by kind (study, export, reprocess)",
                                  ["kind"], registry=registry)
        self.sweep_seconds = Histogram("cxrtriage_scheduler_sweep_seconds", "Time one sweep took",
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
                                       registry=registry)
        self.sweep_errors = Counter("cxrtriage_scheduler_sweep_errors",
                                    "Sweeps that failed (database or broker unreachable)", registry=registry)
        self.nightly = Counter("cxrtriage_scheduler_nightly_runs",
                               "Nightly reprocessing runs, by outcome (ran, held_elsewhere, failed)",
                               ["outcome"], registry=registry)
        self.storage_free = free_space_gauge("cxrtriage_scheduler_storage_free_bytes",
                                             "Free space where instances are stored", registry, storage_dir)


class Stopwatch:
    """Start times of running tasks by task id (threads pool safe)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self, task_id: str) -> None:
        with self._lock:
            self._started[task_id] = time.monotonic()

    def stop(self, task_id: str) -> float | None:
        with self._lock:
            started = self._started.pop(task_id, None)
        return None if started is None else time.monotonic() - started
