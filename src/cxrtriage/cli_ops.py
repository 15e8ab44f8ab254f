"""Operator commands of `cxrtriage`: --version, `reprocess`, `models`, and the per-process
metrics endpoints the long-running commands start. Kept beside cli.py so that it stays small."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from cxrtriage.config import BUNDLED_MODEL, Settings, load_settings
from cxrtriage.errors import ConfigError


def version_text() -> str:
    """The installed package's version and the bundled model's name and version (read from its
    manifest as plain JSON, so that --version does not load torch)."""
    try:
        package = metadata.version("cxrtriage")
    except metadata.PackageNotFoundError:
        package = "unknown (not installed)"
    try:
        manifest = json.loads((BUNDLED_MODEL / "manifest.json").read_text())
        model = f"{manifest['name']} {manifest['version']}"
    except (OSError, ValueError, KeyError):
        model = "missing"
    return f"cxrtriage {package}\nbundled model {model}"


class VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()


def metrics_port(args: argparse.Namespace, settings: Settings) -> int:
    port = getattr(args, "metrics_port", None)
    return int(settings.metrics_port if port is None else port)


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


def cmd_reprocess(args: argparse.Namespace) -> int:
    from cxrtriage.db.operations import (
        FINISHED_STATES,
        ReprocessSelection,
        model_ids,
        select_for_reprocessing,
    )
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.worker.app import configure_app
    from cxrtriage.worker.reprocessing import Pace, requeue_paced, serving_model

    settings = load_settings(args.config)
    upgrade(settings.database_url)
    configure_app(settings)
    db = Database(settings.database_url)
    serving_id, serving = serving_model(db, settings)
    states = tuple(s.strip() for item in args.state for s in item.split(",") if s.strip()) or tuple(
        str(s) for s in FINISHED_STATES)
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
        queued = requeue_paced(db, uids, serving, pace, advance=bar.update, states=states)
    print(f"{queued} studies queued for reprocessing with {target}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cxrtriage.db.operations import model_summaries
    from cxrtriage.db.session import Database, upgrade

    settings = load_settings(args.config)
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
    from cxrtriage.cli import format_table

    for row in rows:
        row["weights"] = row["weights_sha256"][:12]
        row["serving"] = "*" if row["serving"] else ""
    print(format_table(rows, ["serving", "id", "name", "version", "weights", "flag_label", "threshold",
                              "studies_read", "images_read", "current_result_of", "registered_at"]))
    return 0


def _serving_identity(settings: Settings) -> tuple[str, float] | None:
    """The serving package's weights and threshold (a new version may change the threshold alone),
    read as plain JSON so that this command does not load torch."""
    try:
        manifest = json.loads((Path(settings.model) / "manifest.json").read_text())
        return str(manifest["weights_sha256"]), float(manifest["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def add_commands(add: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    p = add("reprocess", cmd_reprocess,
            "queue finished studies again for the serving model, paced so daytime traffic keeps priority")
    p.add_argument("--not-read-by", metavar="VERSION",
                   help="studies that no registered model of this version string has read "
                        "(default: studies the serving model, identified by its weights, has not read)")
    p.add_argument("--include-read", action="store_true",
                   help="do not filter on model version (e.g. redo a list of studies)")
    p.add_argument("--since", help="last image received on or after this local date (YYYY-MM-DD)")
    p.add_argument("--until", help="... and on or before this local date (inclusive)")
    p.add_argument("--state", action="append", default=[],
                   help="done, skipped and/or failed (comma-separated or repeated; default all three)")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="only this study; repeatable")
    p.add_argument("--studies-file", help="only the study UIDs in this file, one per line")
    p.add_argument("--limit", type=int, default=0, help="at most this many studies (most recent first)")
    p.add_argument("--dry-run", action="store_true", help="count what would be queued; queue nothing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="studies queued per second (default CXRTRIAGE_REPROCESS_RATE_PER_SECOND)")
    p.add_argument("--max-queued", type=int, default=None,
                   help="wait while this many studies are queued or processing; 0: no cap "
                        "(default CXRTRIAGE_REPROCESS_MAX_QUEUED)")
    p = add("models", cmd_models, "model versions known to the database: thresholds, studies read")
    p.add_argument("--json", action="store_true")


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus endpoint port for this process (default CXRTRIAGE_METRICS_PORT; "
                             "0: off)")
