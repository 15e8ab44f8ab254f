"""The floor: `cxrtriage predict --json` over the benchmark's files, images/s with start-up
excluded.

The CLI is timed twice, over a few files and over all of them, each run as its own process
from launch to exit; the rate is the difference in images over the difference in seconds, so
that interpreter start-up, imports and model loading (the same in both runs) cancel out. Both
runs use the model the pipeline serves (CXRTRIAGE_MODEL, else the bundled package): the CLI
reads the same setting. CPU time and peak RSS come from wait4(2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PredictRun:
    images: int
    seconds: float
    cpu_seconds: float  # user + system, from wait4(2)
    peak_rss_mb: float
    rows: list[dict[str, object]]


def predict(paths: list[Path], env: dict[str, str] | None = None) -> PredictRun:
    command = [sys.executable, "-m", "cxrtriage.cli", "predict", "--json", *map(str, paths)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err,
                                env={**os.environ, "CXRTRIAGE_LOG_LEVEL": "WARNING", **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its rusage, not by Popen
        seconds = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"cxrtriage predict exited {code}: "
                               f"{err.read().decode(errors='replace')[-800:]}")
        rows = json.loads(out.read())
    failed = [r for r in rows if "error" in r]
    if len(rows) != len(paths) or failed:
        raise RuntimeError(f"cxrtriage predict classified {len(rows) - len(failed)} of {len(paths)} "
                           f"files: {failed[:1]}")
    return PredictRun(len(paths), seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, rows)


@dataclass(frozen=True)
class Floor:
    images_per_s: float
    small: PredictRun
    large: PredictRun

    @property
    def flagged(self) -> int:
        return sum(1 for r in self.large.rows if r.get("flagged"))

    @property
    def cpu_s_per_image(self) -> float:
        """CPU seconds per image, start-up excluded the same way. Other work on the machine
        inflates it too: torch's threads spin while they wait for a core."""
        return (self.large.cpu_seconds - self.small.cpu_seconds) / (self.large.images - self.small.images)

    @property
    def startup_s(self) -> float:
        return self.small.seconds - self.small.images / self.images_per_s


def measure(paths: list[Path], small: int = 8, env: dict[str, str] | None = None) -> Floor:
    """The small run has enough files (8) that the slow first forward passes on CPU (kernel
    selection for a new shape) fall in both runs and cancel out too."""
    small = max(1, min(small, len(paths) // 4))
    for _ in range(3):  # other work on the machine can make the small run the slower one
        short = predict(paths[:small], env)
        full = predict(paths, env)
        extra_seconds = full.seconds - short.seconds
        if extra_seconds > 0:
            return Floor((full.images - short.images) / extra_seconds, short, full)
    raise RuntimeError("the larger predict run was not slower than the smaller three times: "
                       "too few files (BENCH_STUDIES) or a machine too busy to measure")
