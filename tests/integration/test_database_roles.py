"""The audit log holds against the services on PostgreSQL: migrations run as an owner role, and
the services' role, granted by `cxrtriage db upgrade`, may INSERT and SELECT on audit_log but not
UPDATE, DELETE or TRUNCATE it, nor drop or disable its triggers, nor drop it. The services still
do their work under that role. On a real PostgreSQL, with the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.engine import make_url

from cxrtriage.db import ingest
from cxrtriage.db.review import audit, audit_events
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import StoredInstance
from tests.conftest import FAILED
from tests.servers import Proc, start_postgres


@pytest.fixture
def roles(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Proc, dict[str, str]]]:
    """An owner role owning the database, a service role with nothing yet, and their URLs."""
    postgres, admin_url = start_postgres(tmp_path)
    admin = make_url(admin_url)
    try:
        with psycopg.connect(host=admin.host, port=admin.port, user=admin.username, dbname="postgres",
                             autocommit=True) as connection:
            for role in ("cxr_owner", "cxr_service", "cxr_member"):
                connection.execute(f"CREATE ROLE {role} LOGIN")
            connection.execute("GRANT cxr_owner TO cxr_member")  # holds the owner's rights
            connection.execute("CREATE DATABASE cxrtriage OWNER cxr_owner")
        urls = {role: admin.set(username=role, database="cxrtriage").render_as_string(hide_password=False)
                for role in ("cxr_owner", "cxr_service", "cxr_member")}
        yield postgres, urls
    finally:
        if request.node.stash.get(FAILED, False):
            postgres.dump()
        postgres.stop()


def _upgrade(tmp_path: Path, service_url: str, owner_url: str | None) -> subprocess.CompletedProcess[str]:
    """`cxrtriage db upgrade`, as a deployment runs it (the migrate unit or container)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRTRIAGE_")}
    env["CXRTRIAGE_DATABASE_URL"] = service_url
    if owner_url:
        env["CXRTRIAGE_MIGRATION_DATABASE_URL"] = owner_url
    return subprocess.run([sys.executable, "-m", "cxrtriage.cli", "db", "upgrade"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def _connect(url: str) -> psycopg.Connection:
    parts = make_url(url)
    return psycopg.connect(host=parts.host, port=parts.port, user=parts.username, dbname=parts.database,
                           autocommit=True)


REFUSED = [
    ("UPDATE audit_log SET action = 'forged'", errors.InsufficientPrivilege),
    ("DELETE FROM audit_log", errors.InsufficientPrivilege),
    ("TRUNCATE audit_log", errors.InsufficientPrivilege),
    ("DROP TRIGGER audit_log_append_only ON audit_log", errors.InsufficientPrivilege),
    ("DROP TRIGGER audit_log_no_truncate ON audit_log", errors.InsufficientPrivilege),
    ("ALTER TABLE audit_log DISABLE TRIGGER ALL", errors.InsufficientPrivilege),
    ("DROP TABLE audit_log", errors.InsufficientPrivilege),
    ("ALTER TABLE audit_log OWNER TO cxr_service", errors.InsufficientPrivilege),
]


def test_the_service_role_may_only_append_to_and_read_the_audit_log(tmp_path, roles):
    _, urls = roles
    result = _upgrade(tmp_path, urls["cxr_service"], urls["cxr_owner"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "service role cxr_service granted" in result.stdout

    # What the services do, as the service role: start (the schema is current), index, audit.
    upgrade(urls["cxr_service"])
    db = Database(urls["cxr_service"])
    with db.session() as session:
        ingest.open_association(session, "a1", "MODALITY", "127.0.0.1:1")
        ingest.index_instance(session, StoredInstance("a1", "1.2.3", "1.2.3.1", "1.2.3.1.1", "1.2", "DX",
                                                      "1.2.840.10008.1.2.1", "/x.dcm", 1, "ab" * 32, "P"))
        ingest.close_association(session, "a1")
        audit(session, "sign-in", username="alice", client="127.0.0.1")
    with db.session() as session:
        assert [e["action"] for e in audit_events(session)] == ["sign-in"]
    db.engine.dispose()

    with _connect(urls["cxr_service"]) as connection:
        for statement, refusal in REFUSED:
            with pytest.raises(refusal):
                connection.execute(statement)
        connection.execute("GRANT UPDATE ON audit_log TO cxr_service")  # a no-op for a non-owner
        with pytest.raises(errors.InsufficientPrivilege):
            connection.execute("UPDATE audit_log SET action = 'forged'")
        assert connection.execute("SELECT count(*) FROM audit_log").fetchone() == (1,)
        connection.execute("UPDATE studies SET state = 'queued'")  # state tables: the services' own
        connection.execute("DELETE FROM study_associations")

    # The owner cannot UPDATE, DELETE or TRUNCATE it either without first dropping a trigger.
    with _connect(urls["cxr_owner"]) as connection:
        for statement in ("UPDATE audit_log SET action = 'forged'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"):
            with pytest.raises(errors.RaiseException, match="append-only"):
                connection.execute(statement)


@pytest.mark.parametrize(("service", "refusal"), [
    ("cxr_owner", "the same role"),
    ("cxr_member", "member of the owner role"),
])
def test_upgrade_refuses_a_service_role_with_the_owners_rights(tmp_path, roles, service, refusal):
    _, urls = roles
    result = _upgrade(tmp_path, urls[service], urls["cxr_owner"])
    assert result.returncode != 0 and refusal in result.stderr, result.stderr[-3000:]


def test_a_service_role_cannot_migrate_and_says_who_can(tmp_path, roles):
    _, urls = roles
    result = _upgrade(tmp_path, urls["cxr_service"], None)
    assert result.returncode != 0, result.stdout
    assert "CXRTRIAGE_MIGRATION_DATABASE_URL" in result.stderr, result.stderr[-3000:]
