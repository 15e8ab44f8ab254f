"""Live studies first, measured: what a bulk reprocessing run costs the studies that arrive while
it runs, and what they cost it.

With `cxrtriage serve` (embedded defaults: SQLite, filesystem broker, heat maps on) sending SRs
to Orthanc, as in benchmarks/pipeline.py:

1. BENCH_LIVE_BULK one-image studies are sent with storescu and classified (their first reading).
2. A few one-image studies are sent one at a time on the idle service: the idle latency
   (storescu's return to the SR at Orthanc, minus the quiet time), the reference.
3. `cxrtriage reprocess --include-read` requeues every bulk study, unpaced (`--rate 100000
   --max-queued 0`), so that what is measured is the queue order (the bulk queue, and batches
   that take live studies first), not the pacing that would otherwise hold bulk work back.
   Once half of the bulk studies are done, one live study is sent every BENCH_LIVE_INTERVAL
   seconds (each in a thread of its own, so they may overlap) until the bulk run is done.
4. The bulk rate before and while live studies arrive comes from each bulk study's
   `finished_at` (`cxrtriage studies --json`), over whole batches: from the end of the first
   batch to the end of the last batch before live traffic began, and from there to the last
   bulk study finished. Batch ends are when the worker's count goes up. The quiet window needs
   at least two batches before half-way, so BENCH_LIVE_BULK of at least 4 batches (32 at
   CXRTRIAGE_BATCH_STUDIES=8).

Progress is read from the worker's Prometheus endpoint (`cxrtriage_worker_studies_processed_total`),
not by polling the CLI, which would cost a core's worth of start-ups on a small machine. Only
public interfaces are used: the CLI, CXRTRIAGE_* settings, DICOM, metrics and Orthanc's REST API.

Run alone: `BENCH_ONLY=live .venv/bin/python -m benchmarks.run` (or with `floor` for the ratio
of the bulk rate to the floor).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

from pydicom.uid import ExplicitVRLittleEndian
from tests.peers import storescu
from tests.servers import LOOPBACK, free_port, wait_for

from benchmarks import floor, pipeline
from benchmarks.corpus import Study, all_paths, make_studies
from benchmarks.report import GpuSampler, Report, percentile

PROCESSED = "cxrtriage_worker_studies_processed_total"
SEND_CHUNK = 50  # files per storescu run when sending the bulk set
LIVE_POLL_SECONDS = 0.05  # how often a live study's SR is looked for at Orthanc
FLOOR_FILES = 120  # bulk files the bulk run's own floor is measured on
FLOOR_RUNS = 3  # its median: one run read anywhere from 10.2 to 14.4 images/s on the same files


@dataclass
class LiveFirst:
    bulk_studies: int
    idle_latencies: list[float]
    live_latencies: list[float] = field(default_factory=list)
    live_sent: int = 0
    live_missing: int = 0  # live studies whose SR did not arrive
    bulk_seconds: float = 0.0  # reprocess started to last bulk study finished
    quiet_rate: float | None = None  # bulk studies/s before live traffic
    live_rate: float | None = None  # ... while live studies arrived
    quiet_studies: int = 0  # studies the quiet window counts
    live_window_studies: int = 0  # ... and the live one
    gpu_busy_percent: float | None = None
    own_floor: float | None = None  # `predict` over bulk files, images/s (the bulk run's own floor)


def _consecutive_free_ports(count: int) -> int:
    """A first port such that it and the next count-1 are free (`serve` gives its receiver the
    metrics port, its worker the next and its export worker the one after)."""
    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as sock:
                    sock.bind((LOOPBACK, port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def processed(port: int) -> int:
    """Studies the worker has finished so far, in any state, from its metrics endpoint."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(PROCESSED)))


def _send(service: pipeline.Service, studies: list[Study]) -> None:
    paths = [p for s in studies for p in s.paths]
    for start in range(0, len(paths), SEND_CHUNK):
        result = storescu(service.port, paths[start:start + SEND_CHUNK])
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")


def _finished_at(service: pipeline.Service) -> dict[str, tuple[str, datetime | None]]:
    """Each study's state and finished_at (UTC), from `cxrtriage studies --json`."""
    rows = json.loads(service.cli("studies", "--json", "--limit", "1000000"))["studies"]
    out: dict[str, tuple[str, datetime | None]] = {}
    for row in rows:
        when = datetime.fromisoformat(row["finished_at"]) if row["finished_at"] else None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # stored as UTC (db/models.py utcnow)
        out[row["study_uid"]] = (row["state"], when)
    return out


def window_rates(finished: list[datetime], first: datetime,
                 split: datetime) -> tuple[float | None, int, float | None, int]:
    """Studies/s over whole batches, and the studies each window counts: from the end of the
    first batch (`first`) to the end of the last batch before live traffic began (`split`), and
    from there to the last study finished. A batch's studies are recorded just before its task
    ends, so those of the batch that ended at a boundary fall in the window before it. A rate
    is None where its window is empty."""
    end = max(finished)

    def rate(start: datetime, stop: datetime) -> tuple[float | None, int]:
        count = sum(1 for t in finished if start < t <= stop)
        seconds = (stop - start).total_seconds()
        return (count / seconds if count and seconds > 0 else None), count

    quiet, quiet_n = rate(first, split)
    live, live_n = rate(split, end)
    return quiet, quiet_n, live, live_n


class LiveSender:
    """One live study at a time on a clock, each sent and waited for in a thread of its own."""

    def __init__(self, service: pipeline.Service, studies: list[Study], quiet: float) -> None:
        self.service, self.pending, self.quiet = service, list(studies), quiet
        self.latencies: list[float] = []
        self.missing = 0
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def arrived(self) -> int:
        with self._lock:
            return len(self.latencies)

    def send_next(self) -> bool:
        if not self.pending:
            return False
        thread = threading.Thread(target=self._one, args=(self.pending.pop(0),), daemon=True)
        thread.start()
        self.threads.append(thread)
        return True

    def _one(self, study: Study) -> None:
        try:
            result = storescu(self.service.port, study.paths)
            sent = time.perf_counter()
            if result.returncode != 0:
                raise RuntimeError(f"storescu failed: {result.stderr[-300:]}")
            wait_for(lambda: self.service.has_sr(study.uid), 600, "a live study's SR at Orthanc",
                     interval=LIVE_POLL_SECONDS)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            with self._lock:
                self.missing += 1
            return
        with self._lock:
            self.latencies.append(time.perf_counter() - sent - self.quiet)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=660)


def measure(work: Path, bulk: int, interval: float, idle: int, quiet: float, gpu: bool) -> LiveFirst:
    bulk_set = make_studies(work / "bulk", bulk, seed=21, images_per_study=1,
                            syntaxes=[ExplicitVRLittleEndian], prefix="B")
    # Enough live studies for half the bulk run at one a second; the sender stops when they run out.
    live_set = make_studies(work / "live-studies", 1 + idle + min(200, max(20, bulk // 2)), seed=22,
                            images_per_study=1, syntaxes=[ExplicitVRLittleEndian], prefix="V")
    warmup, idle_set, live_set = live_set[0], live_set[1:1 + idle], live_set[1 + idle:]
    # The bulk run's own floor: `predict` over its kind of file (the pipeline's floor mixes
    # compressed syntaxes, which decode slower), before the service starts.
    own_floor = statistics.median(floor.measure(all_paths(bulk_set[:FLOOR_FILES])).images_per_s
                                  for _ in range(FLOOR_RUNS))
    metrics = _consecutive_free_ports(3)
    with mock.patch.dict(os.environ, {"CXRTRIAGE_METRICS_PORT": str(metrics)}):
        service = pipeline.Service(work / "service", quiet)  # serve reads the port at start
    worker = metrics + 1
    timeout = max(300.0, 10.0 * bulk)
    with service:
        service.send_and_wait(warmup)
        _send(service, bulk_set)
        wait_for(lambda: processed(worker) >= 1 + bulk, timeout, "the bulk set's first reading", 0.5)
        wait_for(lambda: len(service.sr_series()) >= 1 + bulk, 120, "the bulk set's SRs at Orthanc", 0.5)
        time.sleep(2)  # heat maps follow their SRs
        result = LiveFirst(bulk, [], own_floor=own_floor)
        for i, study in enumerate(idle_set):
            time.sleep((i * 0.37) % 1.0)
            result.idle_latencies.append(service.send_and_wait(study) - quiet)

        uids = work / "bulk-uids.txt"
        uids.write_text("".join(f"{s.uid}\n" for s in bulk_set))
        before = processed(worker)
        started = datetime.now(UTC)
        sender = LiveSender(service, live_set, quiet)
        with GpuSampler(enabled=gpu) as sampler:
            service.cli("reprocess", "--include-read", "--studies-file", str(uids), "--rate", "100000",
                        "--max-queued", "0")
            # Batch ends, as the worker's count goes up (it counts a batch when its task ends).
            batch_ends: list[datetime] = []
            count = before
            deadline = time.monotonic() + timeout
            while count - before < bulk // 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("half the bulk run did not finish")
                if (now := processed(worker)) != count:
                    count = now
                    batch_ends.append(datetime.now(UTC))
                time.sleep(0.1)
            deadline = time.monotonic() + timeout
            next_send = time.monotonic()
            # Bulk studies done: all finished studies but the live ones whose SR came back (a live
            # study finished whose SR is still on its way ends the loop a moment early at most).
            while processed(worker) - before - sender.arrived < bulk:
                if time.monotonic() > deadline:
                    raise TimeoutError("bulk reprocessing did not finish")
                if time.monotonic() >= next_send:
                    sender.send_next()
                    next_send += interval
                time.sleep(0.25)
            sender.join()
        result.gpu_busy_percent = sampler.busy_percent
        result.live_latencies, result.live_missing = sender.latencies, sender.missing
        result.live_sent = len(sender.threads)

        states = _finished_at(service)
        finished = []
        for study in bulk_set:
            state, when = states.get(study.uid, ("missing", None))
            if state not in pipeline.FINISHED or when is None or when < started:
                raise RuntimeError(f"a bulk study was not reprocessed (state {state})")
            finished.append(when)
        result.bulk_seconds = (max(finished) - started).total_seconds()
        result.quiet_rate, result.quiet_studies, result.live_rate, result.live_window_studies = (
            window_rates(finished, batch_ends[0], batch_ends[-1]))
        return result


def run(report: Report, work: Path, quiet: float, gpu: bool, pipeline_floor: float | None) -> None:
    """The part `live` of benchmarks/run.py: measure, then add the figures to the report."""
    bulk = int(os.environ.get("BENCH_LIVE_BULK", "60"))
    interval = float(os.environ.get("BENCH_LIVE_INTERVAL", "3"))
    idle = int(os.environ.get("BENCH_LIVE_IDLE", "3"))
    if bulk < 16:
        raise ValueError(f"BENCH_LIVE_BULK must be at least 16 (two batches before half-way), got {bulk}")
    report.note(f"live: {bulk} one-image studies classified, then reprocessed unpaced by `cxrtriage "
                f"reprocess --include-read`; from half-way, one live one-image study every {interval:g} s "
                f"until the bulk run is done; latency past the {quiet:g} s quiet time")
    result = measure(work, bulk, interval, idle, quiet, gpu)
    report.add("live_bulk_studies", result.bulk_studies)
    report.add("live_bulk_seconds", result.bulk_seconds)
    report.add("live_bulk_studies_per_s", result.bulk_studies / result.bulk_seconds, 3)
    report.add("live_bulk_quiet_studies_per_s", result.quiet_rate, 3)
    report.add("live_bulk_with_live_studies_per_s", result.live_rate, 3)
    report.ratio("live_bulk_with_live_to_quiet_ratio", result.live_rate, result.quiet_rate)
    report.ratio("live_bulk_to_floor_ratio", result.quiet_rate, pipeline_floor)  # one image per study
    report.add("live_own_floor_images_per_s", result.own_floor, 2)
    report.ratio("live_bulk_to_own_floor_ratio", result.quiet_rate, result.own_floor)
    report.add("live_sent_during_bulk", result.live_sent)
    report.add("live_srs_missing", result.live_missing)
    if result.idle_latencies:
        report.add("live_idle_latency_p50_s", percentile(result.idle_latencies, 0.5))
    if result.live_latencies:
        report.add("live_latency_p50_s", percentile(result.live_latencies, 0.5))
        report.add("live_latency_p90_s", percentile(result.live_latencies, 0.9))
        report.add("live_latency_max_s", max(result.live_latencies))
        if result.idle_latencies:
            report.ratio("live_latency_p50_to_idle_ratio", percentile(result.live_latencies, 0.5),
                         percentile(result.idle_latencies, 0.5), 2)
    if gpu:
        report.add("live_bulk_gpu_busy_percent", result.gpu_busy_percent, 1)
    report.note(f"live: the quiet window counted {result.quiet_studies} bulk studies, the live one "
                f"{result.live_window_studies}; live latencies (s): "
                + ", ".join(f"{s:.2f}" for s in result.live_latencies))
