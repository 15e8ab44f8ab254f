"""What a command handler is, and how a command group binds one to its subcommand.

Every handler takes the parsed arguments and the settings that `main` loaded once; a handler that
needs no settings (training, evaluation) simply leaves them unused.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from cxrtriage.config import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace, Settings], int]


def add_command(sub: Subparsers, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    """A subcommand whose help and description are `help_text`, bound to `handler`."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=handler)
    return parser
