"""The Alembic migrations on SQLite and PostgreSQL: `upgrade head` builds the schema the models
declare (autogenerate finds nothing to change), and the newest revision goes down and up again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import cxrtriage.db.accounts  # noqa: F401  (the login throttle's table is declared there)
from cxrtriage.db.models import Base
from cxrtriage.db.session import make_engine, upgrade
from tests.servers import start_postgres

PACKAGE_DB = Path(__file__).resolve().parents[2] / "src" / "cxrtriage" / "db"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db.sqlite"
        return
    postgres, pg_url = start_postgres(tmp_path)
    try:
        yield pg_url
    except BaseException:
        postgres.dump()
        raise
    finally:
        postgres.stop()


def _config(url: str) -> Config:
    config = Config(str(PACKAGE_DB / "alembic.ini"))
    config.set_main_option("script_location", str(PACKAGE_DB / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _export_columns(url: str) -> tuple[set[str], list[tuple[list[str], str, list[str]]]]:
    engine = make_engine(url)
    try:
        schema = inspect(engine)
        columns = {c["name"] for c in schema.get_columns("sr_exports")}
        keys = [(k["constrained_columns"], k["referred_table"], k["referred_columns"])
                for k in schema.get_foreign_keys("sr_exports")]
        return columns, keys
    finally:
        engine.dispose()


def test_upgrade_head_matches_the_models(url: str) -> None:
    upgrade(url)
    assert _differences(url) == [], "the migrations and db/models.py disagree"


def test_exports_record_their_source_instance_and_0009_goes_down_and_up(url: str) -> None:
    upgrade(url)
    columns, keys = _export_columns(url)
    assert "source_instance_id" in columns
    assert (["source_instance_id"], "instances", ["id"]) in keys
    command.downgrade(_config(url), "0008")
    columns, keys = _export_columns(url)
    assert "source_instance_id" not in columns
    assert all(k[1] != "instances" for k in keys)
    upgrade(url)
    assert _differences(url) == []
