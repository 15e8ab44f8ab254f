"""The operator's commands against the database: `db upgrade`, `studies`, `exports` (and
`exports retry`), `reprocess` and `models`."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtriage.cli.handlers import add_command
from cxrtriage.cli.output import format_table
from cxrtriage.config import Settings
from cxrtriage.domain import FINISHED, ExportState
from cxrtriage.errors import ConfigError, CxrTriageError

if TYPE_CHECKING:
    from cxrtriage.cli.handlers import Subparsers

EXPORT_STATES = [str(state) for state in ExportState]


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.engine import make_url

    from cxrtriage.db.roles import grant_service_role
    from cxrtriage.db.session import make_engine, upgrade

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


def cmd_studies(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.queries import recent_rejections, recent_studies
    from cxrtriage.db.session import Database, upgrade

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


def cmd_exports(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.exports import count_by_state, list_exports, retry_exports
    from cxrtriage.db.session import Database, upgrade

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


def _day(text: str, what: str) -> datetime:
    """A local date or date-time as UTC; a bare date means the start of that day."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{what} must be a date (YYYY-MM-DD) or date-time, got {text!r}") from exc
    if value.tzinfo is None:
        value = value.astimezone()  # local time, as an operator means it
    return value.astimezone(UTC)


def _until(text: str) -> datetime:
    """--until is inclusive: a bare date covers that whole day."""
    if len(text) == 10:
        day = date.fromisoformat(text) + timedelta(days=1)
        return datetime.combine(day, time()).astimezone().astimezone(UTC)
    return _day(text, "--until")


def _study_uids(args: argparse.Namespace) -> tuple[str, ...]:
    uids = list(args.study)
    if args.studies_file:
        try:
            lines = Path(args.studies_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--studies-file cannot be read: {exc}") from exc
        uids += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return tuple(dict.fromkeys(uids))


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.operations import ReprocessSelection, model_ids, select_for_reprocessing
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.worker.dispatch import Dispatcher
    from cxrtriage.worker.reprocessing import Pace, requeue_paced, serving_model

    upgrade(settings.database_url)
    dispatcher = Dispatcher.for_settings(settings)
    db = Database(settings.database_url)
    serving_id, serving = serving_model(db, settings)
    states = tuple(s.strip() for item in args.state for s in item.split(",") if s.strip()) or tuple(
        str(s) for s in FINISHED)
    not_read_by: tuple[int, ...] = ()
    if args.not_read_by:  # every registered model of that version (any weights)
        with db.session() as session:
            not_read_by = model_ids(session, args.not_read_by) or (-1,)
    elif not args.include_read:  # the serving model itself, identified by its weights
        not_read_by = (serving_id,)
    try:
        selection = ReprocessSelection(
            not_read_by=not_read_by,
            received_from=_day(args.since, "--since") if args.since else None,
            received_before=_until(args.until) if args.until else None,
            states=states, study_uids=_study_uids(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    with db.session() as session:
        uids = select_for_reprocessing(session, selection)
    if args.limit:
        uids = uids[: args.limit]
    target = f"model {serving.name} {serving.version}"
    if args.dry_run:
        print(f"{len(uids)} studies would be queued for reprocessing with {target} (dry run)")
        return 0
    pace = Pace(args.rate or settings.reprocess_rate_per_second,
                settings.reprocess_max_queued if args.max_queued is None else args.max_queued)
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    if terminal:  # one line per study would scroll the bar away; the summary is logged at the end
        logging.getLogger("cxrtriage.worker.dispatch").setLevel(logging.WARNING)
    # A terminal that reports no size (a pty without one) would get no bar from tqdm at all.
    size = shutil.get_terminal_size()
    with tqdm(total=len(uids), unit="study", desc="reprocessing", disable=not terminal, file=sys.stderr,
              ncols=size.columns, nrows=size.lines) as bar:
        queued = requeue_paced(db, uids, serving, pace, advance=bar.update, states=states,
                               enqueue=dispatcher.bulk_study)
    print(f"{queued} studies queued for reprocessing with {target}")
    return 0


def _serving_identity(settings: Settings) -> tuple[str, float] | None:
    """The serving package's weights and threshold (a new version may change the threshold alone),
    from its manifest, which is read without torch."""
    from cxrtriage.models.manifest import read_manifest

    try:
        manifest = read_manifest(settings.model)
    except (OSError, CxrTriageError):
        return None
    if not manifest.weights_sha256:  # a package that names no weights serves none of the rows
        return None
    return manifest.weights_sha256, float(manifest.threshold)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db.operations import model_summaries
    from cxrtriage.db.session import Database, upgrade

    upgrade(settings.database_url)
    db = Database(settings.database_url)
    with db.session() as session:
        rows = model_summaries(session)
    serving = _serving_identity(settings)
    for row in rows:
        row["serving"] = (row["weights_sha256"], row["threshold"]) == serving
    if args.json:
        print(json.dumps({"models": rows}, indent=2, default=str))
        return 0
    for row in rows:
        row["weights"] = row["weights_sha256"][:12]
        row["serving"] = "*" if row["serving"] else ""
    print(format_table(rows, ["serving", "id", "name", "version", "weights", "flag_label", "threshold",
                              "studies_read", "images_read", "current_result_of", "registered_at"]))
    return 0


def _register_exports(sub: Subparsers) -> None:
    p = add_command(sub, "exports", cmd_exports, "SR exports by state; `exports retry` sends them again")
    p.add_argument("--state", choices=EXPORT_STATES)
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
    group.add_argument("--state", dest="state", choices=EXPORT_STATES)
    group.add_argument("--all", action="store_true", help="every export")


def _register_reprocess(sub: Subparsers) -> None:
    p = add_command(sub, "reprocess", cmd_reprocess,
                    "queue finished studies again for the serving model, paced so daytime traffic keeps "
                    "priority")
    p.add_argument("--not-read-by", metavar="VERSION",
                   help="studies that no registered model of this version string has read "
                        "(default: studies the serving model, identified by its weights, has not read)")
    p.add_argument("--include-read", action="store_true",
                   help="do not filter on model version (e.g. redo a list of studies)")
    p.add_argument("--since", help="last image received on or after this local date (YYYY-MM-DD)")
    p.add_argument("--until", help="... and on or before this local date (inclusive)")
    p.add_argument("--state", action="append", default=[],
                   help=f"{', '.join(FINISHED[:-1])} and/or {FINISHED[-1]} "
                        "(comma-separated or repeated; default all three)")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="only this study; repeatable")
    p.add_argument("--studies-file", help="only the study UIDs in this file, one per line")
    p.add_argument("--limit", type=int, default=0, help="at most this many studies (most recent first)")
    p.add_argument("--dry-run", action="store_true", help="count what would be queued; queue nothing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="studies queued per second (default CXRTRIAGE_REPROCESS_RATE_PER_SECOND)")
    p.add_argument("--max-queued", type=int, default=None,
                   help="wait while this many studies are queued or processing; 0: no cap "
                        "(default CXRTRIAGE_REPROCESS_MAX_QUEUED)")


def register(sub: Subparsers) -> None:
    p = add_command(sub, "studies", cmd_studies, "recent studies, their state, reasons and results")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    db = sub.add_parser("db", help="database commands", description="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="run migrations to the latest revision; with "
                          "CXRTRIAGE_MIGRATION_DATABASE_URL, as that owner role, then grant the "
                          "service role its privileges (docs/database-roles.md)")
    up.set_defaults(func=cmd_db_upgrade)
    _register_exports(sub)
    _register_reprocess(sub)
    p = add_command(sub, "models", cmd_models,
                    "model versions known to the database: thresholds, studies read")
    p.add_argument("--json", action="store_true")
