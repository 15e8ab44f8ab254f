"""PostgreSQL roles: the owner runs the migrations, the services run as a role that owns nothing.

Only a table's owner (or a member of its role, or a superuser) may TRUNCATE it without the
privilege, drop or disable its triggers, or drop it. So the append-only audit log holds against
the services only if their role is none of those: `cxrtriage db upgrade` migrates as the owner
(CXRTRIAGE_MIGRATION_DATABASE_URL) and then grants the service role what the services need:

- SELECT, INSERT, UPDATE and DELETE on the state tables (never TRUNCATE, TRIGGER or REFERENCES);
- SELECT and INSERT on `audit_log`, nothing else;
- SELECT on `alembic_version` (each service checks at start that the schema is current);
- USAGE on the schema and on its sequences (ids).

It grants again at every upgrade, so a table a later migration adds is covered. See
docs/database-roles.md for creating the two roles.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from cxrtriage.errors import ConfigError

logger = logging.getLogger(__name__)
APPEND_ONLY_TABLES = frozenset({"audit_log"})
READ_ONLY_TABLES = frozenset({"alembic_version"})
STATE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def _check_service_role(connection: Connection, role: str) -> None:
    """Refuse a service role that could undo the audit log's protection."""
    row = connection.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"),
                             {"role": role}).first()
    if row is None:
        raise ConfigError(f"database service role {role!r} does not exist: create it first "
                          "(docs/database-roles.md)")
    owner = connection.execute(text("SELECT current_user")).scalar_one()
    if role == owner:
        raise ConfigError("CXRTRIAGE_MIGRATION_DATABASE_URL and the service role are the same role "
                          f"({role!r}): the services would own the audit log")
    if row.rolsuper:
        raise ConfigError(f"database service role {role!r} is a superuser: it could truncate the audit log")
    member = connection.execute(text("SELECT pg_has_role(:role, :owner, 'MEMBER')"),
                                {"role": role, "owner": owner}).scalar_one()
    if member:
        raise ConfigError(f"database service role {role!r} is a member of the owner role {owner!r}: "
                          "it would hold the owner's rights over the audit log")


def grant_service_role(engine: Engine, role: str) -> list[str]:
    """Grant `role` the services' privileges on every table the connected (owner) role owns in
    the current schema, and revoke any others. Returns the tables granted."""
    if engine.dialect.name != "postgresql":
        raise ConfigError("database roles apply to PostgreSQL only")
    with engine.begin() as connection:
        _check_service_role(connection, role)
        quoted = connection.dialect.identifier_preparer.quote(role)
        schema = connection.dialect.identifier_preparer.quote(
            connection.execute(text("SELECT current_schema()")).scalar_one())
        tables = list(connection.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tableowner = current_user ORDER BY tablename")).scalars())
        connection.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}"))
        for table in tables:
            name = connection.dialect.identifier_preparer.quote(table)
            connection.execute(text(f"REVOKE ALL ON {schema}.{name} FROM {quoted}"))
            connection.execute(text(f"GRANT {privileges(table)} ON {schema}.{name} TO {quoted}"))
        connection.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}"))
    logger.info("database service role granted", extra={"role": role, "tables": len(tables)})
    return tables


def privileges(table: str) -> str:
    if table in APPEND_ONLY_TABLES:
        return "SELECT, INSERT"
    if table in READ_ONLY_TABLES:
        return "SELECT"
    return STATE_PRIVILEGES


def owns_audit_log(connection: Connection) -> bool:
    """Whether the connected role could truncate the audit log or drop its triggers: it owns the
    table, is a member of its owner's role, or is a superuser."""
    row = connection.execute(text(
        "SELECT pg_has_role(current_user, tableowner, 'MEMBER') OR "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
        "FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_log'")).first()
    return bool(row and row[0])
