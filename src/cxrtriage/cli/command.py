"""The `cxrtriage` command."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Any

from cxrtriage.cli import accounts, models, operations, serving  # the command groups
from cxrtriage.config import BUNDLED_MODEL, load_settings
from cxrtriage.errors import CxrTriageError
from cxrtriage.logs import configure_logging


def version_text() -> str:
    """The installed package's version and the bundled model's name and version (from its manifest,
    which is read without torch, so that --version does not load it)."""
    from cxrtriage.models.manifest import read_manifest

    try:
        package = metadata.version("cxrtriage")
    except metadata.PackageNotFoundError:
        package = "unknown (not installed)"
    try:
        manifest = read_manifest(BUNDLED_MODEL)
        model = f"{manifest.name} {manifest.version}"
    except (OSError, CxrTriageError):
        model = "missing"
    return f"cxrtriage {package}\nbundled model {model}"


class VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrtriage", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (also CXRTRIAGE_CONFIG)")
    parser.add_argument("--version", action=VersionAction,
                        help="print the package version and the bundled model's name and version")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serving, models, operations, accounts):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, load the settings once (every command gets them from here), configure logging, run."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log_level, settings.log_format)
        return int(args.func(args, settings))
    except CxrTriageError as exc:
        print(f"cxrtriage: error: {exc}", file=sys.stderr)
        return 2
