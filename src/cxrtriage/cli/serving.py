"""The long-running commands: `serve` (the whole process tree), `receiver`, `scheduler`, `worker`
and `web`, with the per-process metrics endpoints they start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from cxrtriage.cli.handlers import add_command
from cxrtriage.config import Settings
from cxrtriage.errors import ConfigError

if TYPE_CHECKING:
    from cxrtriage.cli.handlers import Subparsers

logger = logging.getLogger("cxrtriage.cli")  # the name its log lines have always carried


def metrics_port(args: argparse.Namespace, settings: Settings) -> int:
    port = getattr(args, "metrics_port", None)
    return int(settings.metrics_port if port is None else port)


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus endpoint port for this process (default CXRTRIAGE_METRICS_PORT; "
                             "0: off)")


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def receiver_identity(settings: Settings, group: tuple[int, int] = (0, 1)) -> str:
    """Whose association rows these are: the same on every restart of this receiver, distinct
    between receivers on several hosts sharing one database, and between the processes of a
    group sharing one port (`group`: this process's index, and the group's size)."""
    import socket

    identity = settings.receiver_id or f"{socket.gethostname()}:{settings.port}"
    return f"{identity}/{group[0]}" if group[1] > 1 else identity


def share(limit: int, processes: int) -> int:
    """One process's part of a limit that a group of receiver processes enforces together."""
    return max(1, -(-limit // processes))


def cmd_receiver(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.ingest import close_stale_associations
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.dicom.receiver import AccessPolicy, Receiver, ReceiverLimits
    from cxrtriage.dicom.storage import InstanceStore, Watermark
    from cxrtriage.dicom.tls import server_context
    from cxrtriage.worker import monitoring
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.dispatch import Dispatcher
    from cxrtriage.worker.receiving import DatabaseIndex
    from cxrtriage.worker.scheduler import run_scheduler

    tls = None
    if settings.tls_certificate and settings.tls_key and settings.tls_ca:
        tls = server_context(settings.tls_certificate, settings.tls_key, settings.tls_ca)
    elif settings.environment == "production":
        if settings.tls_required:
            raise ConfigError("production refuses to listen without DICOM TLS: set "
                              "CXRTRIAGE_TLS_CERTIFICATE, CXRTRIAGE_TLS_KEY and CXRTRIAGE_TLS_CA, or "
                              "CXRTRIAGE_TLS_REQUIRED=false to accept unencrypted DICOM")
        logger.warning("DICOM TLS is off in production (CXRTRIAGE_TLS_REQUIRED=false): patient data "
                       "crosses the network unencrypted")
    upgrade(settings.database_url)
    dispatcher = Dispatcher(configure_app(settings))
    db = Database(settings.database_url)
    group = (args.group_index, args.group_size)
    if not 0 <= group[0] < group[1]:
        raise ConfigError(f"--group-index must be in 0..{group[1] - 1}, got {group[0]}")
    identity = receiver_identity(settings, group)
    with db.session() as session:
        closed = close_stale_associations(session, identity)
    logger.info("receiver starting", extra={"receiver_id": identity, "stale_associations_closed": closed})
    limits = ReceiverLimits(max_instance_bytes=settings.max_instance_bytes,
                            max_decoded_bytes=settings.max_decoded_bytes,
                            max_associations=share(settings.max_associations, group[1]),
                            max_pending_connections=share(settings.max_pending_connections, group[1]),
                            # The per-address limits are not split: the kernel spreads one peer's
                            # connections unevenly, and a peer within its limit must not be refused
                            # for that. The group's totals still bound what it holds.
                            max_pending_per_peer=settings.max_pending_per_peer,
                            max_associations_per_peer=settings.max_associations_per_peer,
                            max_pdu_size=settings.max_pdu_size,
                            max_associate_rq_bytes=settings.max_associate_rq_bytes,
                            pdu_timeout=settings.pdu_timeout,
                            negotiation_timeout=settings.negotiation_timeout,
                            acse_timeout=settings.acse_timeout,
                            dimse_timeout=settings.dimse_timeout,
                            network_timeout=settings.network_timeout,
                            tls_handshake_timeout=settings.acse_timeout,
                            heartbeat_seconds=settings.association_liveness_seconds / 4)
    access = AccessPolicy(tuple(settings.allowed_calling_aes), tuple(settings.allowed_peers),
                          tuple(settings.ae_title_aliases), settings.tls_identities)
    watermark = Watermark(settings.min_free_bytes, settings.max_disk_used_percent)
    wake = threading.Event()  # an association closed: its studies may go quiet; sweep then
    index: Any = DatabaseIndex(db, identity, closed=None if args.no_scheduler else wake)
    scheduler_metrics = None
    if port := metrics_port(args, settings):
        registry = monitoring.new_registry()
        index = monitoring.MeteredIndex(index, monitoring.ReceiverMetrics(registry, settings.storage_dir))
        scheduler_metrics = monitoring.SchedulerMetrics(registry, settings.storage_dir)
        monitoring.serve_metrics(registry, settings.metrics_host, port)
    receiver = Receiver(settings.ae_title, InstanceStore(settings.storage_dir), index, limits, access, tls,
                        watermark)
    stop = _wait_for_signal()
    receiver.start(settings.host, settings.port, shared_port=group[1] > 1)
    scheduler = None
    if not args.no_scheduler:
        scheduler = threading.Thread(target=run_scheduler, args=(settings, stop, scheduler_metrics),
                                     kwargs={"wake": wake, "dispatcher": dispatcher}, daemon=True)
        scheduler.start()
    stop.wait()
    receiver.stop()
    if scheduler:
        scheduler.join(timeout=10)
    return 0


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.worker import monitoring
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.dispatch import Dispatcher
    from cxrtriage.worker.scheduler import run_scheduler

    dispatcher = Dispatcher(configure_app(settings))
    metrics = None
    if port := metrics_port(args, settings):
        registry = monitoring.new_registry()
        metrics = monitoring.SchedulerMetrics(registry, settings.storage_dir)
        monitoring.serve_metrics(registry, settings.metrics_host, port)
    run_scheduler(settings, _wait_for_signal(), metrics, dispatcher=dispatcher)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.worker import monitoring, observe
    from cxrtriage.worker.app import BULK_QUEUE, EXPORT_QUEUE, QUEUE, configure_app

    app = configure_app(settings)
    concurrency = args.concurrency or settings.worker_concurrency
    queues = {"studies": f"{QUEUE},{BULK_QUEUE}", "live": QUEUE, "bulk": BULK_QUEUE,
              "exports": EXPORT_QUEUE, "all": f"{QUEUE},{BULK_QUEUE},{EXPORT_QUEUE}"}[args.queues]
    if concurrency > 1 and args.queues != "exports":
        # Each concurrent task would otherwise run torch on every core: share them out instead
        # (read by torch when it starts, which is after this; an operator's own value wins).
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    if port := metrics_port(args, settings):
        if args.pool == "prefork":  # tasks would run in children this process cannot see
            logger.warning("worker metrics count only solo and threads pools; prefork children "
                           "are not reported")
        registry = monitoring.new_registry()
        observe.install(monitoring.WorkerMetrics(registry, settings.storage_dir), app.runtime().db)
        monitoring.serve_metrics(registry, settings.metrics_host, port)
    app.worker_main(["worker", f"--pool={args.pool}", f"--concurrency={concurrency}", "-Q", queues,
                     "--loglevel", settings.log_level, "--without-gossip", "--without-mingle"])
    return 0


def serve_children(settings: Settings) -> dict[str, list[str]]:
    """The processes `serve` runs, by name, as `cxrtriage` arguments: the receivers (the first
    with the scheduler), the study workers, the export worker and the review app. Each gets its
    own metrics port from CXRTRIAGE_METRICS_PORT up: receiver 0, worker 1, exporter 2, then the
    other receivers, then the other workers."""
    port = settings.metrics_port

    def metrics(offset: int) -> list[str]:
        return ["--metrics-port", str(port + offset)] if port else []

    group, workers = settings.receiver_processes, settings.worker_processes
    receivers = {f"receiver-{i}" if group > 1 else "receiver":
                 ["receiver", "--group-index", str(i), "--group-size", str(group),
                  *(["--no-scheduler"] if i else []), *metrics(0 if i == 0 else 2 + i)]
                 for i in range(group)}
    study_workers = {f"worker-{i}" if workers > 1 else "worker":
                     ["worker", "--pool", "solo", "--queues", "studies",
                      *metrics(1 if i == 0 else group + 1 + i)]
                     for i in range(workers)}
    return {**receivers, **study_workers,
            "exporter": ["worker", "--pool", "threads", "--queues", "exports",
                         "--concurrency", str(settings.export_concurrency), *metrics(2)],
            "web": ["web"]}


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.session import upgrade
    from cxrtriage.models.manifest import read_manifest
    from cxrtriage.worker.supervisor import supervise

    read_manifest(settings.model)  # refuse to start without a model package
    upgrade(settings.database_url)
    print(f"cxrtriage serving {settings.ae_title}@{settings.host}:{settings.port} "
          f"(database {settings.database_url}, model {settings.model})", flush=True)
    print(f"review app on http://{settings.web_host}:{settings.web_port}/", flush=True)
    if (workers := settings.worker_processes) > 1:
        # torch in each would start a thread per core (an operator's own value wins)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return supervise(serve_children(settings))


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.web.server import serve

    serve(settings)
    return 0


def register(sub: Subparsers) -> None:
    add_command(sub, "serve", cmd_serve, "receiver, scheduler, worker and review app in one process tree")
    p = add_command(sub, "receiver", cmd_receiver, "the DICOM receiver (C-ECHO, C-STORE) with its scheduler")
    p.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler thread")
    p.add_argument("--group-size", type=int, default=1,
                   help="receiver processes sharing the port (SO_REUSEPORT); the association and "
                        "pending-connection limits are split among them")
    p.add_argument("--group-index", type=int, default=0, help="this process's place in the group (0..size-1)")
    add_metrics_port(p)
    p = add_command(sub, "scheduler", cmd_scheduler,
                    "the scheduler alone: queues quiet studies, retries, nightly jobs")
    add_metrics_port(p)
    p = add_command(sub, "worker", cmd_worker, "a Celery worker that processes studies and sends SRs")
    p.add_argument("--pool", default="solo", choices=["solo", "threads", "prefork"],
                   help="solo or threads on GPU nodes (never fork after CUDA starts)")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--queues", default="all", choices=["all", "studies", "live", "bulk", "exports"],
                   help="studies (classification: live and bulk reprocessing, taken in turn), live "
                        "or bulk alone, exports (SR sending) or all; run exports in their own "
                        "worker so that a PACS outage never holds up classification")
    add_metrics_port(p)
    add_command(sub, "web", cmd_web, "the review app alone (CXRTRIAGE_WEB_HOST, CXRTRIAGE_WEB_PORT)")
