"""The `cxrtriage` command (console script `cxrtriage.cli:main`).

`command` holds the parser and `main`, which loads the settings once and hands them to the one
command run; `serving`, `models`, `operations` and `accounts` each register a group of commands,
and `output` formats what they print.
"""

from cxrtriage.cli.command import main

__all__ = ["main"]
