"""Several schedulers are harmless: two real `cxrtriage scheduler` processes sweep one database,
and tonight's reprocessing runs once. Counted at the broker (the filesystem transport keeps each
message as a file): every study is dispatched exactly once."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cxrtriage.db.models import SchedulerRun, Series, Study, utcnow
from cxrtriage.db.session import Database
from tests.scrape import scrape, value
from tests.servers import free_port, wait_for


def _dispatched(queue: Path) -> list[str]:
    """Study UIDs of the process_study messages waiting in the filesystem broker."""
    uids = []
    for path in sorted(queue.glob("*.msg")):
        message = json.loads(path.read_text())
        if message.get("headers", {}).get("task") != "cxrtriage.process_study":
            continue
        args = json.loads(base64.b64decode(message["body"]))[0]
        uids.append(args[0])
    return uids


def _clear_of_the_hour() -> datetime:
    now = datetime.now()
    if now.minute == 59 and now.second > 30:  # the nightly hour must not change under the test
        time.sleep(61 - now.second)
    return datetime.now()


@pytest.mark.slow
def test_two_schedulers_dispatch_each_study_once_and_run_the_nightly_job_once(
        tmp_path: Path, service_factory, tiny_package) -> None:
    now = _clear_of_the_hour()
    ports = [free_port(), free_port()]
    service = service_factory({"CXRTRIAGE_MODEL": str(tiny_package),
                               "CXRTRIAGE_NIGHTLY_REPROCESS_HOUR": str(now.hour),
                               "CXRTRIAGE_REPROCESS_MAX_QUEUED": "0",
                               "CXRTRIAGE_REPROCESS_RATE_PER_SECOND": "50",
                               "CXRTRIAGE_SWEEP_INTERVAL_SECONDS": "0.05"})
    service.cli("db", "upgrade")
    db = Database(f"sqlite:///{tmp_path / 'var' / 'cxrtriage.db'}")
    finished = [f"1.2.826.0.1.3680043.10.1367.9.{n}" for n in range(3)]
    arrived = "1.2.826.0.1.3680043.10.1367.9.7"
    with db.session() as session:
        for uid in finished:  # read before (by no model this database knows): tonight's work
            session.add(Study(study_uid=uid, state="done", last_received_at=utcnow() - timedelta(days=2)))
        study = Study(study_uid=arrived, state="received", last_received_at=utcnow() - timedelta(seconds=5))
        session.add(study)
        session.flush()
        session.add(Series(study_id=study.id, series_uid=arrived + ".1"))
    for n, port in enumerate(ports):
        service.start(f"scheduler-{n}", "scheduler", "--metrics-port", str(port))

    def nightly_done() -> list[dict]:  # type: ignore[type-arg]
        with db.session() as session:
            rows = session.scalars(select(SchedulerRun).where(SchedulerRun.job == "nightly-reprocess")
                                   .order_by(SchedulerRun.id))
            done = [{"run_key": r.run_key, "studies": r.studies, "outcome": r.outcome} for r in rows]
        return done if done and done[0]["outcome"] == "ran" else []

    done = wait_for(nightly_done, 90, "the nightly run", interval=0.3)
    assert len(done) == 1 and done[0]["studies"] == 3 and done[0]["run_key"] == now.date().isoformat()  # type: ignore[index]
    queue = tmp_path / "var" / "broker" / "queue"
    wait_for(lambda: len(_dispatched(queue)) >= 4, 30, "four messages")
    time.sleep(2.0)  # dozens more sweeps of both schedulers
    dispatched = _dispatched(queue)
    assert sorted(dispatched) == sorted([*finished, arrived]), "each study dispatched exactly once"

    scrapes = [scrape(port) for port in ports]
    nightly = "cxrtriage_scheduler_nightly_runs_total"
    ran = [value(t, nightly, outcome="ran") or 0 for t in scrapes]
    held = [value(t, nightly, outcome="held_elsewhere") or 0 for t in scrapes]
    assert sorted(ran) == [0, 1] and sorted(held) == [0, 1], "one ran, the other found the lock taken"
    assert sum(value(t, "cxrtriage_scheduler_dispatched_total", kind="reprocess") or 0 for t in scrapes) == 3
    service.stop()
    service.check_logs()
