"""Engines and transactional sessions. Engines are made per process, after fork, never at import."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cxrtriage.errors import ConfigError

logger = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # an indexed instance survives power loss
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work that commits on success and rolls back on any error."""
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def upgrade(url: str, revision: str = "head", warn_if_owner: bool = True) -> None:
    """Run Alembic migrations programmatically. A schema already at `revision` is left alone, so
    a service whose database role may not change it still starts; one that is behind and may not
    be migrated by this role is a ConfigError that says who may (docs/database-roles.md).
    On PostgreSQL, a role that owns the audit log is warned about, unless `warn_if_owner` is
    false (`cxrtriage db upgrade`, connected as the owner on purpose)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import ProgrammingError

    from cxrtriage.db.roles import owns_audit_log

    here = Path(__file__).parent
    config = Config(str(here / "alembic.ini"))
    config.set_main_option("script_location", str(here / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = make_engine(url)  # for SQLite, this also creates the parent directory
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            if warn_if_owner and engine.dialect.name == "postgresql" and owns_audit_log(connection):
                logger.warning("this database role owns the audit log, so it could truncate it: run "
                               "migrations as an owner role (CXRTRIAGE_MIGRATION_DATABASE_URL) and "
                               "the services as another (docs/database-roles.md)")
    finally:
        engine.dispose()
    wanted = ScriptDirectory.from_config(config).get_current_head() if revision == "head" else revision
    if current == wanted:
        return
    try:
        command.upgrade(config, revision)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise ConfigError(f"the database schema is at revision {current}, this version needs {wanted}, "
                          "and this role may not migrate it: run `cxrtriage db upgrade` with "
                          "CXRTRIAGE_MIGRATION_DATABASE_URL (the owner role) first") from None
