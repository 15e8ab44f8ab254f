"""Receiver processes sharing one port (SO_REUSEPORT): two `cxrtriage receiver` processes of one
group, dcmtk's storescu sending over many associations; every instance is stored and indexed
once, each process records its associations under its own receiver id, and the group splits the
association limit between its processes."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cxrtriage.cli.serving import receiver_identity, share
from cxrtriage.config import Settings
from cxrtriage.db.models import Association, Instance
from cxrtriage.db.session import Database, upgrade
from tests.factory import radiograph, write_study
from tests.peers import echoscu, storescu
from tests.servers import LOOPBACK, Proc, free_port, running, wait_for

ASSOCIATIONS = 16  # all 16 landing on one of two processes by chance: 2 in 65,536


def _group(tmp_path: Path, port: int, **settings: str) -> list[Proc]:
    """Two receiver processes of one group on `port`, on a SQLite index (migrated once, before
    the group starts); `settings`: more CXRTRIAGE_* variables."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    env = {"CXRTRIAGE_DATABASE_URL": url, "CXRTRIAGE_STORAGE_DIR": str(tmp_path / "storage"),
           "CXRTRIAGE_HOST": LOOPBACK, "CXRTRIAGE_PORT": str(port), "CXRTRIAGE_RECEIVER_ID": "rx",
           "CXRTRIAGE_METRICS_PORT": "0", "CXRTRIAGE_BROKER_DIR": str(tmp_path / "broker"), **settings}
    return [Proc(f"receiver-{i}", [sys.executable, "-m", "cxrtriage.cli", "receiver", "--no-scheduler",
                                   "--group-size", "2", "--group-index", str(i)], tmp_path, env)
            for i in range(2)]


def test_two_receiver_processes_share_the_port_and_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    port = free_port()
    procs = _group(tmp_path, port)
    with running(procs):
        wait_for(lambda: all(p.alive() for p in procs) and echoscu(port), 60, "both receivers")
        sent = 0
        for n in range(ASSOCIATIONS):
            files = write_study(tmp_path / f"send-{n}", [radiograph(), radiograph()])
            assert storescu(port, files).returncode == 0
            sent += len(files)
        db = Database(url)
        with db.session() as session:
            stored = session.scalar(select(func.count()).select_from(Instance))
            owners = set(session.scalars(select(Association.receiver_id)))
        assert stored == sent
        assert owners == {"rx/0", "rx/1"}, "the kernel spread the associations over both processes"


def test_a_peer_within_its_pending_limit_is_never_refused_for_the_kernels_spread(tmp_path: Path) -> None:
    """Three connections from this address wait, not yet associated, while storescu sends: with
    a per-address limit of four, no process of the group may refuse the fourth, however the
    kernel spread the three (a limit split two per process refused it whenever two had landed
    on the process that took storescu's connection)."""
    port = free_port()
    procs = _group(tmp_path, port, CXRTRIAGE_MAX_PENDING_PER_PEER="4")
    with running(procs):
        wait_for(lambda: all(p.alive() for p in procs) and echoscu(port), 60, "both receivers")
        for n in range(6):
            waiting = [socket.create_connection((LOOPBACK, port)) for _ in range(3)]
            try:
                time.sleep(0.3)  # accepted and counted as negotiating
                files = write_study(tmp_path / f"send-{n}", [radiograph()])
                result = storescu(port, files)
                assert result.returncode == 0, f"refused on try {n}: {result.stderr[-300:]}"
            finally:
                for connection in waiting:
                    connection.close()


@pytest.mark.parametrize(("limit", "processes", "each"), [(10, 1, 10), (10, 2, 5), (10, 3, 4), (1, 4, 1)])
def test_a_group_splits_its_limits(limit: int, processes: int, each: int) -> None:
    assert share(limit, processes) == each


def test_each_process_of_a_group_has_its_own_identity() -> None:
    settings = Settings(receiver_id="rx")
    assert receiver_identity(settings) == "rx"
    assert [receiver_identity(settings, (i, 3)) for i in range(3)] == ["rx/0", "rx/1", "rx/2"]


def test_serve_runs_its_groups_each_on_its_own_metrics_port() -> None:
    from cxrtriage.cli.serving import serve_children

    children = serve_children(Settings(receiver_processes=3, worker_processes=2, metrics_port=9100))
    assert list(children) == ["receiver-0", "receiver-1", "receiver-2", "worker-0", "worker-1", "exporter",
                              "web"]
    ports = [args[args.index("--metrics-port") + 1] for args in children.values() if "--metrics-port" in args]
    assert sorted(map(int, ports)) == list(range(9100, 9106))  # one each but the web's, none shared
    assert [name for name, args in children.items()
            if args[0] == "receiver" and "--no-scheduler" not in args] == ["receiver-0"]
    assert [args[-1] for args in (children["receiver-0"], children["worker-0"])] == ["9100", "9101"]
    plain = serve_children(Settings(metrics_port=0))
    assert list(plain) == ["receiver", "worker", "exporter", "web"]
    assert not any("--metrics-port" in args for args in plain.values())
