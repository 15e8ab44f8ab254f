"""The benchmark's output: one `key value` line per figure, in a fixed order and format, then every
figure again as one JSON object on a line of its own (`BENCHMARK_JSON {...}`), so that a closing
note can paste either and a script can parse either.

Comment lines start with `#` and say what was measured; they are not part of the stable format.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import threading
from pathlib import Path

Value = float | int | str | None


class Report:
    def __init__(self) -> None:
        self.figures: dict[str, Value] = {}

    def note(self, text: str) -> None:
        for line in text.splitlines():
            print(f"# {line}", flush=True)

    def add(self, key: str, value: Value, digits: int = 2) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", key):
            raise ValueError(f"figure keys are lower-case words joined by _, got {key!r}")
        if isinstance(value, float):
            value = round(value, digits)
        self.figures[key] = value
        print(f"{key} {'null' if value is None else value}", flush=True)

    def ratio(self, key: str, numerator: Value, denominator: Value, digits: int = 3) -> None:
        ok = isinstance(numerator, int | float) and isinstance(denominator, int | float) and denominator
        self.add(key, float(numerator) / float(denominator) if ok else None, digits)  # type: ignore[arg-type]

    def finish(self) -> None:
        print("BENCHMARK_JSON " + json.dumps(self.figures, sort_keys=False), flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- processes ---------------------------------------------------------------------------------

def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root`, parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop(0)
        for child in sorted(parents.get(pid, [])):
            out.append(child)
            frontier.append(child)
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far (None: gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the process's peak resident set so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cxrtriage_role(pid: int) -> str:
    """A short name for a `python -m cxrtriage.cli ...` process, from its command line only, so
    that it keeps working when `serve` starts other processes: `worker --queues exports` is the
    exporter, `worker --queues studies` the worker, otherwise the subcommand."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if "cxrtriage.dicom.decode_child" in args or any("multiprocessing.spawn" in a for a in args):
        return "spawned"  # a decoder or preparer child; tree_roles names it after its parent
    if "cxrtriage.cli" in args:
        args = args[args.index("cxrtriage.cli") + 1:]
    elif any(a.endswith("/cxrtriage") for a in args):
        args = args[next(i for i, a in enumerate(args) if a.endswith("/cxrtriage")) + 1:]
    else:
        return Path(args[0]).name or "process"
    words = [a for a in args if a and not a.startswith("-")]
    command = words[0] if words else "cxrtriage"
    if command == "worker" and "--queues" in args:
        queues = args[args.index("--queues") + 1]
        return {"exports": "exporter", "studies": "worker"}.get(queues, "worker")
    return re.sub(r"[^a-z0-9_]", "_", command.lower())


def tree_roles(root: int) -> dict[str, int]:
    """`root` and each process below it, keyed by role (`worker`, `worker_2`, `worker_child` for a
    forked pool child, `worker_spawned` for a decoder child ...)."""
    out: dict[str, int] = {}
    roles: dict[int, str] = {}
    for pid in [root, *descendants(root)]:
        ppid = _ppid(pid)
        role = cxrtriage_role(pid)
        if ppid in roles and role == roles[ppid].split("_child")[0]:
            role = f"{roles[ppid]}_child"  # a pool's forked child has its parent's command line
        elif ppid in roles and role == "spawned":
            role = f"{roles[ppid]}_spawned"
        name, n = role, 2
        while name in out:
            name, n = f"{role}_{n}", n + 1
        roles[pid] = role
        out[name] = pid
    return out


def tree_peak_rss(root: int) -> dict[str, float]:
    """Peak RSS in MB of `root` and each process below it, keyed by role (tree_roles)."""
    peaks = {name: peak_rss_mb(pid) for name, pid in tree_roles(root).items()}
    return {name: mb for name, mb in peaks.items() if mb is not None}


def tree_cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds used so far by `root` and each process below it, keyed by role (tree_roles)."""
    used = {name: cpu_seconds(pid) for name, pid in tree_roles(root).items()}
    return {name: seconds for name, seconds in used.items() if seconds is not None}


class GpuSampler:
    """GPU utilisation (%) from nvidia-smi every 200 ms while running; mean over the window.
    Disabled (no GPU), it samples nothing and reports None."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if not self.enabled:
            return self
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def busy_percent(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None
