"""The scheduler's queue-depth gauge reads the real broker: Redis (empty queue included, where a
passive declare would fail) and the filesystem transport."""

from __future__ import annotations

from pathlib import Path

import kombu.pools
import pytest

from cxrtriage.config import Settings
from cxrtriage.db.session import Database, upgrade
from cxrtriage.worker.dispatch import Dispatcher
from cxrtriage.worker.monitoring import SchedulerMetrics, new_registry
from cxrtriage.worker.scheduler import refresh_gauges
from tests.servers import LOOPBACK, start_redis


def _forget_broker() -> None:
    """Drop connections pooled for another broker by an earlier test in this process (a real
    process configures its broker once)."""
    kombu.pools.reset()


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_queue_depth_counts_waiting_messages(tmp_path: Path, broker: str) -> None:
    _forget_broker()
    redis = None
    url = "filesystem://"
    if broker == "redis":
        redis, port = start_redis(tmp_path)
        url = f"redis://{LOOPBACK}:{port}/0"
    try:
        database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(database_url)
        dispatcher = Dispatcher.for_settings(Settings(broker_url=url, broker_dir=tmp_path / "broker",
                                                      database_url=database_url,
                                                      storage_dir=tmp_path / "storage"))
        db = Database(database_url)
        registry = new_registry()
        metrics = SchedulerMetrics(registry, tmp_path)

        def depth() -> float | None:
            refresh_gauges(db, dispatcher, metrics)
            return registry.get_sample_value("cxrtriage_scheduler_queue_depth", {"queue": "cxrtriage"})

        assert depth() == 0
        for n in range(3):
            dispatcher.study(f"1.2.3.{n}")  # no worker runs: the messages wait
        assert depth() == 3
        assert registry.get_sample_value("cxrtriage_scheduler_studies_waiting", {"state": "queued"}) == 0
    finally:
        _forget_broker()
        if redis is not None:
            redis.stop()
