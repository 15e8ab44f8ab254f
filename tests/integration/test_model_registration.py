"""Workers that start together register the same model once, on PostgreSQL as on SQLite."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cxrtriage.db.models import ModelVersion
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import ModelInfo
from tests.servers import start_postgres

MODEL = ModelInfo("m", "1.0", "us", "1.2.826.0.1.3680043.10.1367.1", "c" * 64)


def _waiting_on_a_lock(db: Database) -> bool:
    with db.session() as s:
        return bool(s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")))


def test_a_second_worker_registering_the_same_model_meanwhile_gets_its_row(tmp_path: Path) -> None:
    postgres, url = start_postgres(tmp_path)
    try:
        upgrade(url)
        db = Database(url)
        first = Session(db.engine)
        first_id = register_model(first, MODEL, {})  # inserted, not yet committed
        second: list[int] = []

        def register() -> None:
            with db.session() as s:
                second.append(register_model(s, MODEL, {}))

        thread = threading.Thread(target=register)
        thread.start()
        deadline = time.monotonic() + 30  # the second insert waits on the first one's unique key
        while not _waiting_on_a_lock(db):
            assert time.monotonic() < deadline, "the second registration never reached its insert"
            time.sleep(0.05)
        first.commit()
        first.close()
        thread.join(30)
        assert second == [first_id]
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
    except BaseException:
        postgres.dump()
        raise
    finally:
        postgres.stop()


def test_registering_twice_on_sqlite_returns_one_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        first = register_model(s, MODEL, {})
    with db.session() as s:
        assert register_model(s, MODEL, {}) == first
