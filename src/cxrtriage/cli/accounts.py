"""`users`: the review app's accounts (add, list, disable, passwd)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cxrtriage.cli.handlers import add_command
from cxrtriage.cli.output import format_table
from cxrtriage.config import Settings
from cxrtriage.errors import CxrTriageError

if TYPE_CHECKING:
    from cxrtriage.cli.handlers import Subparsers


def _read_password(prompt: str) -> str:
    """From a terminal, asked twice without echo; otherwise the first line of standard input."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(prompt)
        if first != getpass.getpass("again: "):
            raise CxrTriageError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.db import accounts
    from cxrtriage.db.session import Database, upgrade

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


def register(sub: Subparsers) -> None:
    users = add_command(sub, "users", cmd_users, "review app accounts")
    usersub = users.add_subparsers(dest="users_command", required=True)
    p = usersub.add_parser("add", help="add a user; the password is read from standard input")
    p.add_argument("name")
    p.add_argument("--role", choices=["radiologist", "admin"], required=True)
    usersub.add_parser("list", help="list users")
    p = usersub.add_parser("disable", help="disable a user and close their sessions")
    p.add_argument("name")
    p = usersub.add_parser("passwd", help="set a new password, read from standard input")
    p.add_argument("name")
