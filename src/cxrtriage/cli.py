"""The `cxrtriage` command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cxrtriage.config import Settings, load_settings
from cxrtriage.errors import CxrTriageError
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
    from cxrtriage.db.session import upgrade

    upgrade(_settings(args).database_url)
    print("database is at the latest revision")
    return 0


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_receiver(args: argparse.Namespace) -> int:
    from cxrtriage.db.ingest import close_stale_associations
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.dicom.receiver import AccessPolicy, Receiver, ReceiverLimits
    from cxrtriage.dicom.storage import InstanceStore
    from cxrtriage.dicom.tls import server_context
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.receiving import DatabaseIndex
    from cxrtriage.worker.scheduler import run_scheduler

    settings = _settings(args)
    upgrade(settings.database_url)
    configure_app(settings)
    db = Database(settings.database_url)
    with db.session() as session:
        close_stale_associations(session)
    limits = ReceiverLimits(max_instance_bytes=settings.max_instance_bytes,
                            max_associations=settings.max_associations,
                            max_pdu_size=settings.max_pdu_size, acse_timeout=settings.acse_timeout,
                            dimse_timeout=settings.dimse_timeout,
                            network_timeout=settings.network_timeout)
    access = AccessPolicy(tuple(settings.allowed_calling_aes), tuple(settings.allowed_peers))
    tls = None
    if settings.tls_certificate and settings.tls_key and settings.tls_ca:
        tls = server_context(settings.tls_certificate, settings.tls_key, settings.tls_ca)
    receiver = Receiver(settings.ae_title, InstanceStore(settings.storage_dir), DatabaseIndex(db),
                        limits, access, tls)
    stop = _wait_for_signal()
    receiver.start(settings.host, settings.port)
    scheduler = None
    if not args.no_scheduler:
        scheduler = threading.Thread(target=run_scheduler, args=(settings, stop), daemon=True)
        scheduler.start()
    stop.wait()
    receiver.stop()
    if scheduler:
        scheduler.join(timeout=10)
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.scheduler import run_scheduler

    settings = _settings(args)
    configure_app(settings)
    run_scheduler(settings, _wait_for_signal())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from cxrtriage.worker.app import QUEUE, configure_app

    settings = _settings(args)
    app = configure_app(settings)
    concurrency = args.concurrency or settings.worker_concurrency
    app.worker_main(["worker", f"--pool={args.pool}", f"--concurrency={concurrency}", "-Q", QUEUE,
                     "--loglevel", settings.log_level, "--without-gossip", "--without-mingle"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cxrtriage.db.session import upgrade
    from cxrtriage.models.package import read_manifest
    from cxrtriage.worker.supervisor import supervise

    settings = _settings(args)
    read_manifest(settings.model)  # refuse to start without a model package
    upgrade(settings.database_url)
    print(f"cxrtriage serving {settings.ae_title}@{settings.host}:{settings.port} "
          f"(database {settings.database_url}, model {settings.model})", flush=True)
    return supervise({"receiver": ["receiver"], "worker": ["worker", "--pool", "solo"]})


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
                              shift_seed=args.shift_seed, cache_dir=args.cache_dir)
    print(f"report written to {report}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.scheduler import reprocess_for_current_model

    settings = _settings(args)
    upgrade(settings.database_url)
    configure_app(settings)
    uids = reprocess_for_current_model(Database(settings.database_url), settings)
    print(f"{len(uids)} studies queued for reprocessing")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrtriage", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (also CXRTRIAGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "receiver, scheduler and worker in one process tree (embedded defaults)")
    p = add("receiver", cmd_receiver, "the DICOM receiver (C-ECHO, C-STORE) with its scheduler")
    p.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler thread")
    add("scheduler", cmd_scheduler, "the scheduler alone: queues quiet studies, retries, nightly jobs")
    p = add("worker", cmd_worker, "a Celery worker that processes studies and sends SRs")
    p.add_argument("--pool", default="solo", choices=["solo", "threads", "prefork"],
                   help="solo or threads on GPU nodes (never fork after CUDA starts)")
    p.add_argument("--concurrency", type=int, default=0)
    p = add("predict", cmd_predict, "classify DICOM, PNG or JPEG files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="model package folder (default: CXRTRIAGE_MODEL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", action="store_true", help="write a Grad-CAM PNG next to each image")
    p = add("studies", cmd_studies, "recent studies, their state, reasons and results")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    db = sub.add_parser("db", help="database commands", description="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="run migrations to the latest revision")
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
    add("reprocess", cmd_reprocess, "queue finished studies not yet read by the current model")
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
