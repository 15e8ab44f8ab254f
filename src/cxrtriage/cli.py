"""The `cxrtriage` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cxrtriage.config import Settings, load_settings
from cxrtriage.errors import ConfigError, CxrTriageError
from cxrtriage.logs import configure_logging

logger = logging.getLogger("cxrtriage.cli")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from cxrtriage.db.roles import grant_service_role
    from cxrtriage.db.session import make_engine, upgrade

    settings = _settings(args)
    owner_url = settings.migration_database_url
    upgrade(owner_url or settings.database_url, warn_if_owner=not owner_url)
    print("database is at the latest revision")
    if owner_url and not owner_url.startswith("sqlite"):  # two roles: the services own nothing
        role = settings.database_service_role or make_url(settings.database_url).username or ""
        engine = make_engine(owner_url)
        try:
            tables = grant_service_role(engine, role)
        finally:
            engine.dispose()
        print(f"service role {role} granted its privileges on {len(tables)} tables "
              "(audit_log: SELECT and INSERT only)")
    return 0


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def receiver_identity(settings: Settings) -> str:
    """Whose association rows these are: the same on every restart of this receiver, distinct
    between receivers on several hosts sharing one database."""
    import socket

    return settings.receiver_id or f"{socket.gethostname()}:{settings.port}"


def cmd_receiver(args: argparse.Namespace) -> int:
    from cxrtriage.db.ingest import close_stale_associations
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.dicom.receiver import AccessPolicy, Receiver, ReceiverLimits
    from cxrtriage.dicom.storage import InstanceStore, Watermark
    from cxrtriage.dicom.tls import server_context
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.receiving import DatabaseIndex
    from cxrtriage.worker.scheduler import run_scheduler

    settings = _settings(args)
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
    configure_app(settings)
    db = Database(settings.database_url)
    identity = receiver_identity(settings)
    with db.session() as session:
        closed = close_stale_associations(session, identity)
    logger.info("receiver starting", extra={"receiver_id": identity, "stale_associations_closed": closed})
    limits = ReceiverLimits(max_instance_bytes=settings.max_instance_bytes,
                            max_decoded_bytes=settings.max_decoded_bytes,
                            max_associations=settings.max_associations,
                            max_pending_connections=settings.max_pending_connections,
                            max_pending_per_peer=settings.max_pending_per_peer,
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
    from cxrtriage.cli_ops import metrics_port
    from cxrtriage.worker import monitoring

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
    receiver.start(settings.host, settings.port)
    scheduler = None
    if not args.no_scheduler:
        scheduler = threading.Thread(target=run_scheduler, args=(settings, stop, scheduler_metrics),
                                     kwargs={"wake": wake}, daemon=True)
        scheduler.start()
    stop.wait()
    receiver.stop()
    if scheduler:
        scheduler.join(timeout=10)
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from cxrtriage.cli_ops import metrics_port
    from cxrtriage.worker import monitoring
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.scheduler import run_scheduler

    settings = _settings(args)
    configure_app(settings)
    metrics = None
    if port := metrics_port(args, settings):
        registry = monitoring.new_registry()
        metrics = monitoring.SchedulerMetrics(registry, settings.storage_dir)
        monitoring.serve_metrics(registry, settings.metrics_host, port)
    run_scheduler(settings, _wait_for_signal(), metrics)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from cxrtriage.cli_ops import metrics_port
    from cxrtriage.worker import monitoring, observe
    from cxrtriage.worker.app import EXPORT_QUEUE, QUEUE, configure_app

    settings = _settings(args)
    app = configure_app(settings)
    concurrency = args.concurrency or settings.worker_concurrency
    queues = {"studies": QUEUE, "exports": EXPORT_QUEUE, "all": f"{QUEUE},{EXPORT_QUEUE}"}[args.queues]
    if concurrency > 1 and args.queues != "exports":
        # Each concurrent task would otherwise run torch on every core: share them out instead
        # (read by torch when it starts, which is after this; an operator's own value wins).
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    if port := metrics_port(args, settings):
        if args.pool == "prefork":  # tasks would run in children this process cannot see
            logger.warning("worker metrics count only solo and threads pools; prefork children "
                           "are not reported")
        registry = monitoring.new_registry()
        observe.install(monitoring.WorkerMetrics(registry, settings.storage_dir))
        monitoring.serve_metrics(registry, settings.metrics_host, port)
    app.worker_main(["worker", f"--pool={args.pool}", f"--concurrency={concurrency}", "-Q", queues,
                     "--loglevel", settings.log_level, "--without-gossip", "--without-mingle"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cxrtriage.db.session import upgrade
    from cxrtriage.models.manifest import read_manifest
    from cxrtriage.worker.supervisor import supervise

    settings = _settings(args)
    read_manifest(settings.model)  # refuse to start without a model package
    upgrade(settings.database_url)
    print(f"cxrtriage serving {settings.ae_title}@{settings.host}:{settings.port} "
          f"(database {settings.database_url}, model {settings.model})", flush=True)
    print(f"review app on http://{settings.web_host}:{settings.web_port}/", flush=True)
    port = settings.metrics_port  # one port per process: receiver, worker, exporter from here up

    def metrics(offset: int) -> list[str]:
        return ["--metrics-port", str(port + offset)] if port else []

    return supervise({"receiver": ["receiver", *metrics(0)],
                      "worker": ["worker", "--pool", "solo", "--queues", "studies", *metrics(1)],
                      "exporter": ["worker", "--pool", "threads", "--queues", "exports",
                                   "--concurrency", str(settings.export_concurrency), *metrics(2)],
                      "web": ["web"]})


def cmd_exports(args: argparse.Namespace) -> int:
    from cxrtriage.db.exports import count_by_state, list_exports, retry_exports
    from cxrtriage.db.session import Database, upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    if args.exports_command == "retry":
        if not (args.study or args.state or args.all):
            raise ConfigError("exports retry needs --study UID, --state STATE or --all")
        with db.session() as session:
            ids = retry_exports(session, destination=settings.sr_destination, study_uid=args.study,
                                state=args.state, every=args.all)
        print(f"{len(ids)} exports queued for sending (the scheduler dispatches them)")
        return 0
    with db.session() as session:
        rows = list_exports(session, args.state, args.study, args.limit)
        counts = count_by_state(session)
    if args.json:
        print(json.dumps({"counts": counts, "exports": rows}, indent=2, default=str))
        return 0
    print(", ".join(f"{state}: {n}" for state, n in sorted(counts.items())) or "no exports")
    print(format_table(rows, ["id", "study_uid", "kind", "state", "attempts", "sends",
                              "next_attempt_at", "last_error"]))
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from cxrtriage.web.server import serve

    serve(_settings(args))
    return 0


def _read_password(prompt: str) -> str:
    """From a terminal, asked twice without echo; otherwise the first line of standard input."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(prompt)
        if first != getpass.getpass("again: "):
            raise CxrTriageError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users(args: argparse.Namespace) -> int:
    from cxrtriage.db import accounts
    from cxrtriage.db.session import Database, upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            if args.users_command == "add":
                accounts.add_user(session, args.name, _read_password("password: "), args.role)
                print(f"user {args.name} added ({args.role})")
            elif args.users_command == "passwd":
                accounts.set_password(session, args.name, _read_password("new password: "))
                print(f"password of {args.name} changed; their sessions are closed")
            elif args.users_command == "disable":
                accounts.disable_user(session, args.name)
                print(f"user {args.name} disabled; their sessions are closed")
            else:
                rows = [{"name": u.username, "role": u.role, "active": u.active, "created_at": u.created_at}
                        for u in accounts.list_users(session)]
                print(format_table(rows, ["name", "role", "active", "created_at"]))
    except accounts.AccountError as exc:
        raise CxrTriageError(str(exc)) from exc
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from cxrtriage.db.queries import recent_rejections, recent_studies
    from cxrtriage.db.session import Database, upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    with db.session() as session:
        studies = recent_studies(session, args.limit)
        rejections = recent_rejections(session, args.limit)
    if args.json:
        print(json.dumps({"studies": studies, "rejections": rejections}, indent=2, default=str))
        return 0
    print(format_table(studies, ["study_uid", "state", "flagged", "max_probability", "instances",
                                 "sr_state", "reason"]))
    if rejections:
        print("\nRefused instances:")
        print(format_table(rejections, ["created_at", "calling_ae", "status", "sop_instance_uid",
                                        "reason"]))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxrtriage.models.predict import predict_paths

    settings = _settings(args)
    rows = predict_paths([Path(p) for p in args.paths], Path(args.model or settings.model),
                         heatmaps=args.heatmap)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["path", "label", "probability", "flagged", "note"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cxrtriage.models.packaging import package_run
    from cxrtriage.models.train_config import load_train_config
    from cxrtriage.models.training import train

    cfg = load_train_config(args.config_file, epochs=args.epochs)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    train(cfg, run_dir, cache_dir=args.cache_dir)
    cache = Path(args.cache_dir) if args.cache_dir else None
    out = package_run(cfg, run_dir, Path(args.output or run_dir / "package"), args.config_file, cache)
    print(f"model package written to {out}")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from cxrtriage.models.packaging import Member, package_run
    from cxrtriage.models.train_config import load_train_config

    cfg = load_train_config(args.config_file)
    cache = Path(args.cache_dir) if args.cache_dir else None
    members = [Member(load_train_config(config), Path(run), Path(config)) for config, run in args.member]
    out = package_run(cfg, Path(args.run_dir), Path(args.output), args.config_file, cache, members,
                      half=args.half)
    print(f"model package written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrtriage.models.evaluation import evaluate_package

    report = evaluate_package(Path(args.package), Path(args.data), Path(args.output),
                              fmt=args.format, training_log=args.training_log, holdout=args.holdout,
                              shifted_variants=args.variants if args.shifted else 0,
                              shift_seed=args.shift_seed, cache_dir=args.cache_dir, field=args.field,
                              field_shifts=args.population_shifts if args.field else "none",
                              unseen_by_configs=args.unseen_by)
    print(f"report written to {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cxrtriage import cli_ops

    parser = argparse.ArgumentParser(prog="cxrtriage", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (also CXRTRIAGE_CONFIG)")
    parser.add_argument("--version", action=cli_ops.VersionAction,
                        help="print the package version and the bundled model's name and version")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "receiver, scheduler, worker and review app in one process tree")
    p = add("receiver", cmd_receiver, "the DICOM receiver (C-ECHO, C-STORE) with its scheduler")
    p.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler thread")
    cli_ops.add_metrics_port(p)
    p = add("scheduler", cmd_scheduler, "the scheduler alone: queues quiet studies, retries, nightly jobs")
    cli_ops.add_metrics_port(p)
    p = add("worker", cmd_worker, "a Celery worker that processes studies and sends SRs")
    p.add_argument("--pool", default="solo", choices=["solo", "threads", "prefork"],
                   help="solo or threads on GPU nodes (never fork after CUDA starts)")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--queues", default="all", choices=["all", "studies", "exports"],
                   help="studies (classification), exports (SR sending) or all; run exports in "
                        "their own worker so that a PACS outage never holds up classification")
    cli_ops.add_metrics_port(p)
    p = add("predict", cmd_predict, "classify DICOM, PNG or JPEG files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="model package folder (default: CXRTRIAGE_MODEL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", action="store_true",
                   help="write a heat map PNG (class activation map) next to each image")
    p = add("studies", cmd_studies, "recent studies, their state, reasons and results")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    db = sub.add_parser("db", help="database commands", description="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="run migrations to the latest revision; with "
                          "CXRTRIAGE_MIGRATION_DATABASE_URL, as that owner role, then grant the "
                          "service role its privileges (docs/database-roles.md)")
    up.set_defaults(func=cmd_db_upgrade)
    p = add("train", cmd_train, "train a model from a TOML config, resuming if interrupted")
    p.add_argument("config_file")
    p.add_argument("--run-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--output", help="package folder (default: RUN_DIR/package)")
    p = add("package", cmd_package, "package the best checkpoint of a finished training run")
    p.add_argument("config_file")
    p.add_argument("run_dir")
    p.add_argument("output")
    p.add_argument("--cache-dir")
    p.add_argument("--member", nargs=2, action="append", default=[], metavar=("CONFIG", "RUN_DIR"),
                   help="another run to average with (an ensemble); repeatable")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p = add("evaluate", cmd_evaluate, "evaluate a model package on labelled data")
    p.add_argument("package")
    p.add_argument("data", help="class folders or CSV")
    p.add_argument("--output", default="evaluation")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown")
    p.add_argument("--training-log", help="history.json of the training run, for curves")
    p.add_argument("--holdout", metavar="CONFIG.toml",
                   help="evaluate only the validation patients of this training config")
    p.add_argument("--shifted", action="store_true",
                   help="add the shifted validation: the same pictures as DICOM through the serving path")
    p.add_argument("--variants", type=int, default=2, help="shifted DICOM variants per picture")
    p.add_argument("--shift-seed", type=int, default=20261123)
    p.add_argument("--cache-dir", default=".cache", help="where the shifted validation is cached")
    p.add_argument("--field", action="store_true",
                   help="add the field validation: worst groups, the prior-shift check and the "
                        "population-shift set (models/field_validation.py)")
    p.add_argument("--population-shifts", default="all",
                   help="comma-separated population shifts for --field: all (the default), none, "
                        "or names from models/population_shift.py")
    p.add_argument("--unseen-by", action="append", default=[], metavar="CONFIG.toml",
                   help="leave out the images this training config trained on; repeatable")
    p = add("exports", cmd_exports, "SR exports by state; `exports retry` sends them again")
    p.add_argument("--state", choices=["pending", "sent", "failed", "not_configured"])
    p.add_argument("--study", help="one study's exports (StudyInstanceUID)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(exports_command=None)
    exsub = p.add_subparsers(dest="exports_command")
    r = exsub.add_parser("retry", help="send exports again with a fresh retry horizon",
                         description="send exports again with a fresh retry horizon; re-sending an "
                                     "SR already delivered is harmless and recorded")
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--study", dest="study", help="every export of this StudyInstanceUID")
    group.add_argument("--state", dest="state", choices=["pending", "sent", "failed", "not_configured"])
    group.add_argument("--all", action="store_true", help="every export")
    cli_ops.add_commands(add)
    add("web", cmd_web, "the review app alone (CXRTRIAGE_WEB_HOST, CXRTRIAGE_WEB_PORT)")
    users = add("users", cmd_users, "review app accounts")
    usersub = users.add_subparsers(dest="users_command", required=True)
    p = usersub.add_parser("add", help="add a user; the password is read from standard input")
    p.add_argument("name")
    p.add_argument("--role", choices=["radiologist", "admin"], required=True)
    usersub.add_parser("list", help="list users")
    p = usersub.add_parser("disable", help="disable a user and close their sessions")
    p.add_argument("name")
    p = usersub.add_parser("passwd", help="set a new password, read from standard input")
    p.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log_level, settings.log_format)
        return int(args.func(args))
    except CxrTriageError as exc:
        print(f"cxrtriage: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
