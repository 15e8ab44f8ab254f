"""What a stranger at the review app costs: `cxrtriage web` (a real uvicorn process on loopback,
SQLite, 500 seeded studies) while an honest signed-in browser keeps loading the worklist.

- upload: BENCH_HOSTILE_UPLOADS (3) chunked uploads of 512 MiB each, without a session or a
  password, to POST /api/studies/1.2.3/feedback, one after another, on a raw socket: the
  answer's status and time, the bytes the client got to send before the answer and in all.
- spray: a 200-attempt HTTP Basic password spray (root, the benchmark user and unknown names,
  8 connections at once) from one address, under the default throttle.
- spray_unlocked: the same spray with the lockout out of reach (the attempts settings at 10^6),
  as from many addresses: every attempt runs argon2, so this is what the limiter
  (CXRTRIAGE_WEB_PASSWORD_CHECKS) alone bounds.

For each: the server process's peak RSS above its RSS before (VmHWM, reset through
/proc/PID/clear_refs), the wall time, and the honest page's median latency during the attack as
a ratio to its median when idle. BENCH_WEB_SRC=path/to/src runs the server from another source
tree (an older commit's, for a before/after), the clients staying the same.

Run: .venv/bin/python -m benchmarks.hostile_web
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from tests.hostile_http import chunked_post
from tests.servers import LOOPBACK, free_port, wait_for

from benchmarks.web import PASSWORD, seed, sign_in
from cxrtriage.db.accounts import add_user
from cxrtriage.db.models import AuditEvent
from cxrtriage.db.session import Database, upgrade

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def _reset_peak(pid: int) -> int:
    """Resets the peak RSS to the current RSS (clear_refs 5); returns the current RSS in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


class Server:
    """`cxrtriage web` in a process of its own, so its memory is its own."""

    def __init__(self, work: Path, url: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        src = os.environ.get("BENCH_WEB_SRC", "")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CXRTRIAGE_")}
        environ.update({"CXRTRIAGE_DATABASE_URL": url, "CXRTRIAGE_WEB_PORT": str(self.port),
                        "CXRTRIAGE_LOG_LEVEL": "WARNING", "CXRTRIAGE_STORAGE_DIR": str(work / "storage"),
                        **env})
        if src:
            environ["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), environ.get("PYTHONPATH", "")])
        self.log = (work / f"web-{self.port}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "cxrtriage.cli", "web"], cwd=work, env=environ,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: urllib.request.urlopen(self.base + "/healthz", timeout=5).status == 200, 120,
                 "the review app")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Honest:
    """A signed-in browser loading the worklist, timed, in a thread while an attack runs."""

    def __init__(self, base: str) -> None:
        self.opener = sign_in(base)
        self.url = base + "/"
        self.times: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def once(self) -> float:
        start = time.perf_counter()
        with self.opener.open(self.url, timeout=120) as response:
            response.read()
            assert response.status == 200
        return (time.perf_counter() - start) * 1000

    def idle_ms(self, rounds: int = 20) -> float:
        self.once()  # warm-up
        return statistics.median(self.once() for _ in range(rounds))

    def __enter__(self) -> Honest:
        self.times, self.failures = [], 0
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.times.append(self.once())
                except (OSError, AssertionError):
                    self.failures += 1
                time.sleep(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=150)


def _basic(server: Server, username: str, password: str) -> int:
    request = urllib.request.Request(server.base + "/api/worklist", headers={
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _spray(server: Server, attempts: int = 200, connections: int = 8) -> Counter[int]:
    names = ["root", "bench", *(f"user{i}" for i in range(attempts))]
    with ThreadPoolExecutor(connections) as pool:
        statuses = pool.map(lambda i: _basic(server, names[i % 3 if i % 3 < 2 else 2 + i],
                                             f"Spring{2026 + i}!"), range(attempts))
        return Counter(statuses)


def _stamp_for_older_server(db: Database, src: Path) -> None:
    """Seeded with this tree's schema, the database is marked as at the older tree's head, so
    that its `cxrtriage web` (which upgrades first) starts; the newer tables it never reads."""
    versions = sorted((src / "cxrtriage/db/migrations/versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    with db.session() as session:
        session.execute(text("UPDATE alembic_version SET version_num = :head"),
                        {"head": versions[-1].name[:4]})


def _counts(statuses: Counter[int]) -> str:
    return ",".join(f"{status}x{n}" for status, n in sorted(statuses.items()))


def _audit_rows(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _phase(server: Server, honest: Honest, idle: float, attack: Any) -> dict[str, Any]:
    pid = server.proc.pid
    before = _reset_peak(pid)
    start = time.perf_counter()
    with honest:
        result = attack()
    seconds = time.perf_counter() - start
    during = statistics.median(honest.times) if honest.times else float("nan")
    return {"result": result, "seconds": round(seconds, 2),
            "peak_rss_over_mb": round((_status(pid)["VmHWM"] - before) / 1024, 1),
            "rss_before_mb": round(before / 1024, 1),
            "honest_ms": round(during, 1), "honest_ratio": round(during / idle, 2),
            "honest_requests": len(honest.times), "honest_failures": honest.failures}


def measure(uploads: int = 3, upload_bytes: int = 512 * MiB) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cxrtriage-hostile-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'web.db'}"
        upgrade(url)
        db = Database(url)
        seed(db, 500)
        with db.session() as session:
            add_user(session, "root", PASSWORD, "admin")
        if os.environ.get("BENCH_WEB_SRC"):
            _stamp_for_older_server(db, Path(os.environ["BENCH_WEB_SRC"]))

        server = Server(work, url, {})
        try:
            honest = Honest(server.base)
            idle = honest.idle_ms()
            figures["hostile_web_honest_idle_ms"] = round(idle, 1)

            def upload() -> list[Any]:
                return [chunked_post(server.port, "/api/studies/1.2.3/feedback", upload_bytes,
                                     {"Content-Type": "application/json"}, stall_seconds=30)
                        for _ in range(uploads)]

            phase = _phase(server, honest, idle, upload)
            done = phase.pop("result")
            figures.update({
                "hostile_web_upload_count": uploads, "hostile_web_upload_mib": upload_bytes // MiB,
                "hostile_web_upload_status": ",".join(sorted({str(u.status) for u in done})),
                "hostile_web_upload_answer_s": round(max(u.seconds_to_answer for u in done), 3),
                "hostile_web_upload_sent_before_answer_mib": round(
                    max(u.sent_before_answer for u in done) / MiB, 1),
                "hostile_web_upload_sent_mib": round(max(u.sent for u in done) / MiB, 1),
                **{f"hostile_web_upload_{k}": v for k, v in phase.items()}})

            rows = _audit_rows(db)
            phase = _phase(server, honest, idle, lambda: _spray(server))
            statuses = phase.pop("result")
            figures.update({
                "hostile_web_spray_attempts": sum(statuses.values()),
                "hostile_web_spray_statuses": _counts(statuses),
                "hostile_web_spray_audit_rows": _audit_rows(db) - rows,
                **{f"hostile_web_spray_{k}": v for k, v in phase.items()}})
        finally:
            server.stop()

        unlocked = {f"CXRTRIAGE_WEB_LOGIN_{name}ATTEMPTS": "1000000" for name in ("", "ADDRESS_", "GLOBAL_")}
        server = Server(work, url, unlocked if not os.environ.get("BENCH_WEB_SRC") else {})
        try:
            honest = Honest(server.base)
            idle = honest.idle_ms()
            rows = _audit_rows(db)
            phase = _phase(server, honest, idle, lambda: _spray(server))
            statuses = phase.pop("result")
            figures.update({
                "hostile_web_spray_unlocked_honest_idle_ms": round(idle, 1),
                "hostile_web_spray_unlocked_statuses": _counts(statuses),
                "hostile_web_spray_unlocked_audit_rows": _audit_rows(db) - rows,
                **{f"hostile_web_spray_unlocked_{k}": v for k, v in phase.items()}})
        finally:
            server.stop()
        db.engine.dispose()
    return figures


def main() -> None:
    uploads = int(os.environ.get("BENCH_HOSTILE_UPLOADS", "3"))
    figures = measure(uploads)
    print(f"# review app under attack (cxrtriage web, SQLite, loopback, {os.cpu_count()} CPUs); "
          f"server: {os.environ.get('BENCH_WEB_SRC') or 'this tree'}")
    for key, value in figures.items():
        print(f"{key} {value}")
    print("BENCHMARK_JSON " + json.dumps(figures))


if __name__ == "__main__":
    main()
