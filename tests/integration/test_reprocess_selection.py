"""Which studies a reprocessing run selects, how it paces itself, and the nightly lock, on a
database migrated with Alembic (SQLite here; PostgreSQL for the lock race)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cxrtriage.db.models import InferenceResult, Instance, ModelVersion, Series, Study
from cxrtriage.db.operations import (
    ReprocessSelection,
    claim_run,
    count_in_flight,
    model_summaries,
    select_for_reprocessing,
)
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import ModelInfo
from cxrtriage.worker.reprocessing import Pace, requeue_paced
from tests.servers import start_postgres

MODEL = ModelInfo("m", "2.0", "us", "1.2.3", "b" * 64)


def _day(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    upgrade(url)
    return Database(url)


@pytest.fixture
def corpus(db: Database) -> dict[str, int]:
    """Studies s1..s6 and two model versions; returns the model ids."""
    with db.session() as s:
        m1 = ModelVersion(name="m", version="1.0", weights_sha256="a" * 64, device_uid="1.2", manifest={
            "threshold": 0.4, "flag_label": "PNEUMONIA"})
        m2 = ModelVersion(name="m", version="2.0", weights_sha256="b" * 64, device_uid="1.3", manifest={
            "threshold": 0.6, "flag_label": "PNEUMONIA"})
        s.add_all([m1, m2])
        s.flush()
        rows = [("s1", "done", m1.id, "2026-01-10"), ("s2", "done", m2.id, "2026-01-20"),
                ("s3", "skipped", None, "2026-01-15"), ("s4", "failed", None, "2026-02-01"),
                ("s5", "queued", None, "2026-01-12"), ("s6", "done", m1.id, "2026-01-18")]
        for uid, state, model_id, day in rows:
            study = Study(study_uid=uid, state=state, model_version_id=model_id, last_received_at=_day(day))
            s.add(study)
            s.flush()
            series = Series(study_id=study.id, series_uid=uid + ".1")
            s.add(series)
            s.flush()
            instance = Instance(series_id=series.id, study_id=study.id, sop_instance_uid=uid + ".1.1",
                                sop_class_uid="1.2", transfer_syntax="1.2", path="/x", size_bytes=1)
            s.add(instance)
            s.flush()
            readers = {"s1": [m1.id], "s2": [m1.id, m2.id], "s6": [m1.id, m2.id]}.get(uid, [])
            for reader in readers:  # old and new results side by side
                s.add(InferenceResult(instance_id=instance.id, model_version_id=reader,
                                      probabilities={"PNEUMONIA": 0.5}, flag_label="PNEUMONIA",
                                      flagged=False, threshold=0.5, preprocessing_version="1"))
        return {"m1": m1.id, "m2": m2.id}


CASES = [
    ("everything finished", {}, ["s4", "s2", "s6", "s3", "s1"]),
    ("not read by 2.0", {"not_read_by": "m2"}, ["s4", "s3", "s1"]),
    ("not read by 1.0", {"not_read_by": "m1"}, ["s4", "s3"]),
    ("done only", {"not_read_by": "m2", "states": ("done",)}, ["s1"]),
    ("skipped or failed", {"states": ("skipped", "failed")}, ["s4", "s3"]),
    ("date range", {"received_from": _day("2026-01-12"), "received_before": _day("2026-01-19")},
     ["s6", "s3"]),
    ("study list", {"study_uids": ("s1", "s5", "s9")}, ["s1"]),
    ("list and version", {"study_uids": ("s1", "s2"), "not_read_by": "m2"}, ["s1"]),
]


@pytest.mark.parametrize(("criteria", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_selection(db: Database, corpus: dict[str, int], criteria: dict, expected: list[str]) -> None:  # type: ignore[type-arg]
    if "not_read_by" in criteria:
        criteria = {**criteria, "not_read_by": (corpus[criteria["not_read_by"]],)}
    with db.session() as s:
        assert select_for_reprocessing(s, ReprocessSelection(**criteria)) == expected


def test_only_finished_states_can_be_selected() -> None:
    with pytest.raises(ValueError, match="states must be finished"):
        ReprocessSelection(states=("queued",))


def test_models_lists_versions_thresholds_and_studies_read(db: Database, corpus: dict[str, int]) -> None:
    with db.session() as s:
        rows = {r["version"]: r for r in model_summaries(s)}
    assert (rows["1.0"]["threshold"], rows["1.0"]["studies_read"], rows["1.0"]["images_read"]) == (0.4, 3, 3)
    assert (rows["2.0"]["threshold"], rows["2.0"]["studies_read"], rows["2.0"]["images_read"]) == (0.6, 2, 2)
    assert rows["1.0"]["current_result_of"] == 2 and rows["2.0"]["current_result_of"] == 1


def test_paced_requeue_waits_while_the_queue_is_busy(db: Database, corpus: dict[str, int]) -> None:
    """s5 is queued (live traffic); with a cap of 2, one bulk study may join it, then the run
    waits until a study finishes."""
    sent: list[str] = []
    stop = threading.Event()
    run = threading.Thread(target=requeue_paced, args=(db, ["s1", "s3", "s4"], MODEL,
                                                       Pace(50.0, 2, poll_seconds=0.05), stop),
                           kwargs={"enqueue": sent.append})
    run.start()
    try:
        time.sleep(1.0)
        assert sent == ["s1"], "the second bulk study waits for room in the queue"
        with db.session() as s:
            assert count_in_flight(s) == 2
            s.query(Study).filter(Study.study_uid == "s5").update({"state": "done"})
        deadline = time.monotonic() + 10
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert sent == ["s1", "s3"]
    finally:
        stop.set()
        run.join(10)
    with db.session() as s:
        states = dict(s.query(Study.study_uid, Study.state).all())
    assert states["s1"] == states["s3"] == "queued" and states["s4"] == "failed", "s4 never left its state"


def test_rate_limit_spaces_the_studies(db: Database, corpus: dict[str, int]) -> None:
    sent: list[str] = []
    started = time.monotonic()
    assert requeue_paced(db, ["s1", "s2", "s3", "s4"], MODEL, Pace(5.0, 0), enqueue=sent.append) == 4
    assert time.monotonic() - started >= 0.6  # four studies at 5 per second: three gaps of 0.2 s
    with db.session() as s:
        assert {r.reason for r in s.query(Study).filter(Study.study_uid.in_(sent))} == {
            "reprocessing with model m 2.0"}


def test_a_study_that_changed_meanwhile_is_passed_over(db: Database, corpus: dict[str, int]) -> None:
    sent: list[str] = []
    with db.session() as s:
        s.query(Study).filter(Study.study_uid == "s1").update({"state": "received"})  # a new image
    assert requeue_paced(db, ["s1", "s3"], MODEL, Pace(100.0, 0), enqueue=sent.append) == 1
    assert sent == ["s3"]


def _race(db: Database, contenders: int) -> list[int | None]:
    barrier = threading.Barrier(contenders)
    results: list[int | None] = []

    def contend(n: int) -> None:
        barrier.wait()
        with db.session() as s:
            results.append(claim_run(s, "nightly-reprocess", "2026-11-23", f"host:{n}"))

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_nightly_lock_is_taken_once_sqlite(db: Database) -> None:
    results = _race(db, 4)
    assert len(results) == 4 and sum(r is not None for r in results) == 1
    with db.session() as s:  # the next night is a new run
        assert claim_run(s, "nightly-reprocess", "2026-11-24", "host:9") is not None


def test_nightly_lock_is_taken_once_postgres(tmp_path: Path) -> None:
    postgres, url = start_postgres(tmp_path)
    try:
        upgrade(url)
        results = _race(Database(url), 8)
        assert len(results) == 8 and sum(r is not None for r in results) == 1
    except BaseException:
        postgres.dump()
        raise
    finally:
        postgres.stop()
