"""The whole pipeline against a real PACS: throughput when Orthanc pushes studies to `cxrtriage
serve`, latency of one-image studies sent with storescu, peak RSS of every process `serve` runs,
and (on a GPU, or with BENCH_REPROCESS=1) bulk reprocessing through `cxrtriage reprocess`.

Only public interfaces are used: the `cxrtriage` CLI, CXRTRIAGE_* settings, DICOM and Orthanc's
REST API, so the harness keeps working while the pipeline's insides change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from tests.peers import echoscu, storescu
from tests.servers import Orthanc, Proc, free_port, wait_for

from benchmarks.corpus import Study
from benchmarks.report import GpuSampler, cpu_seconds, tree_cpu_by_role, tree_peak_rss

FINISHED = {"done", "skipped", "failed"}


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    return {"CXRTRIAGE_LOG_LEVEL": "WARNING", **extra}


@dataclass
class Service:
    """Orthanc as the PACS (with the cxrtriage modality) and `cxrtriage serve` sending SRs to it,
    embedded defaults (SQLite, filesystem broker), heatmaps at their default (on)."""

    work: Path
    quiet_seconds: float
    orthanc: Orthanc = field(init=False)
    serve: Proc = field(init=False)
    port: int = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.orthanc = Orthanc(self.work / "orthanc", self.work, "CXRTRIAGE", self.port)
        self.env = cli_env({
            "CXRTRIAGE_PORT": str(self.port), "CXRTRIAGE_WEB_PORT": str(free_port()),
            "CXRTRIAGE_STUDY_QUIET_SECONDS": str(self.quiet_seconds),
            "CXRTRIAGE_SR_DESTINATION": f"{self.orthanc.ae_title}@127.0.0.1:{self.orthanc.dicom_port}"})
        svc = self.work / "svc"
        svc.mkdir(parents=True, exist_ok=True)
        self.serve = Proc("serve", [sys.executable, "-m", "cxrtriage.cli", "serve"], self.work,
                          cwd=svc, env=self.env)
        wait_for(lambda: echoscu(self.port), 180, "cxrtriage receiver", interval=0.5)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of each process under `serve` (by role), and of Orthanc."""
        orthanc = cpu_seconds(self.orthanc.proc.proc.pid) or 0.0
        return {**tree_cpu_by_role(self.serve.proc.pid), "orthanc": orthanc}

    def __enter__(self) -> Service:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        """Stop both; after a failure, print their logs first."""
        if failed is not None:
            self.serve.dump()
            self.orthanc.proc.dump()
        self.stop()

    def stop(self) -> None:
        self.serve.stop()
        self.orthanc.proc.stop()

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", *args], cwd=self.work / "svc",
                                env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"cxrtriage {args[0]} exited {result.returncode}: {result.stderr[-800:]}")
        return result.stdout

    def states(self) -> dict[str, str]:
        """Each study's state, from `cxrtriage studies --json`."""
        rows = json.loads(self.cli("studies", "--json", "--limit", "1000000"))["studies"]
        return {r["study_uid"]: r["state"] for r in rows}

    def sr_series(self) -> dict[str, int]:
        """Orthanc study id -> how many SR series it holds."""
        found = self.orthanc.post("/tools/find", {"Level": "Series", "Expand": True,
                                                  "Query": {"Modality": "SR"}})
        counts: dict[str, int] = {}
        for series in cast(list[dict[str, str]], found):
            counts[series["ParentStudy"]] = counts.get(series["ParentStudy"], 0) + 1
        return counts

    def has_sr(self, study_uid: str) -> bool:
        return bool(self.orthanc.post("/tools/find", {"Level": "Series", "Query": {
            "StudyInstanceUID": study_uid, "Modality": "SR"}}))

    def send_and_wait(self, study: Study, timeout: float = 300) -> float:
        """storescu the study straight to the receiver; seconds from storescu's return to its SR
        found at Orthanc (polled every 20 ms)."""
        result = storescu(self.port, study.paths)
        sent = time.perf_counter()
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
        wait_for(lambda: self.has_sr(study.uid), timeout, "the SR at Orthanc", interval=0.02)
        return time.perf_counter() - sent


@dataclass(frozen=True)
class Throughput:
    studies: int
    images: int
    seconds: float
    cpu_seconds: float  # of every process under `serve` (not Orthanc), first push to last SR
    cpu_by_process: dict[str, float]  # the same by process role, and Orthanc's as `orthanc`
    duplicate_srs: int
    heatmaps: int
    states: dict[str, int]


def upload(orthanc: Orthanc, studies: list[Study]) -> list[str]:
    """Each study into Orthanc over REST; its Orthanc study ids, in order."""
    ids = []
    for study in studies:
        parent = ""
        for path in study.paths:
            answer = orthanc.post("/instances", path.read_bytes())
            parent = answer["ParentStudy"]  # type: ignore[index]
        ids.append(parent)
    return ids


def throughput(service: Service, studies: list[Study], timeout: float) -> Throughput:
    """Upload to Orthanc, then ask Orthanc to push every study to the cxrtriage modality (one
    asynchronous job per study, as an auto-routing rule would); seconds from the first push to
    the last study's SR stored at Orthanc, polled every 100 ms."""
    orthanc = service.orthanc
    ids = upload(orthanc, studies)
    before = orthanc.get("/statistics")["CountInstances"]  # type: ignore[index]
    wanted = set(ids)
    cpu_before = service.cpu_by_process()
    start = time.perf_counter()
    for orthanc_id in ids:
        orthanc.post("/modalities/cxrtriage/store", {"Resources": [orthanc_id], "Asynchronous": True})

    def all_reported() -> bool:
        return wanted <= set(service.sr_series())

    wait_for(all_reported, timeout, "an SR at Orthanc for every pushed study", interval=0.1)
    seconds = time.perf_counter() - start
    cpu_after = service.cpu_by_process()
    by_process = {name: used - cpu_before.get(name, 0.0) for name, used in cpu_after.items()}
    serve_cpu = sum(used for name, used in by_process.items() if name != "orthanc")
    images = sum(len(s.paths) for s in studies)
    time.sleep(2)  # heatmaps may follow their SR; then count what arrived
    counts = service.sr_series()
    after = orthanc.get("/statistics")["CountInstances"]  # type: ignore[index]
    srs = sum(counts.get(i, 0) for i in wanted)
    states = service.states()
    tally: dict[str, int] = {}
    for study in studies:
        state = states.get(study.uid, "missing")
        tally[state] = tally.get(state, 0) + 1
    heatmaps = int(after) - int(before) - srs
    return Throughput(len(studies), images, seconds, serve_cpu, by_process, srs - len(wanted), heatmaps,
                      tally)


def latencies(service: Service, studies: list[Study]) -> list[float]:
    """One study at a time; the pause between studies varies so that arrivals fall at different
    points of the scheduler's sweep cycle. The quiet time is subtracted."""
    out = []
    for i, study in enumerate(studies):
        time.sleep((i * 0.37) % 1.0)
        out.append(service.send_and_wait(study) - service.quiet_seconds)
    return out


def peak_rss(service: Service) -> dict[str, float]:
    return tree_peak_rss(service.serve.proc.pid)


@dataclass(frozen=True)
class Reprocess:
    studies: int
    images: int
    seconds: float
    gpu_busy_percent: float | None


def reprocess(service: Service, studies: list[Study], timeout: float, gpu: bool) -> Reprocess:
    """`cxrtriage reprocess --include-read` on the pipeline's studies with no pacing, and the time
    until none of them is queued or processing (polled with `cxrtriage studies`, about 1 s)."""
    uids = service.work / "reprocess-uids.txt"
    uids.write_text("".join(f"{s.uid}\n" for s in studies))
    wanted = {s.uid for s in studies}
    start = time.perf_counter()
    with GpuSampler(enabled=gpu) as sampler:
        service.cli("reprocess", "--include-read", "--studies-file", str(uids), "--rate", "100000",
                    "--max-queued", "0")
        deadline = time.monotonic() + timeout
        while True:
            states = service.states()
            if all(states.get(uid) in FINISHED for uid in wanted):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("reprocessing did not finish")
            time.sleep(0.5)
        seconds = time.perf_counter() - start
    return Reprocess(len(studies), sum(len(s.paths) for s in studies), seconds, sampler.busy_percent)
