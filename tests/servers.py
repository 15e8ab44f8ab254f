"""Real servers for tests: free loopback ports, readiness by polling, logs dumped on failure,
always torn down."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the server may not be up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """A server binary; a missing one is an install bug (make system-deps), so fail loudly."""
    found = shutil.which(name, path=os.pathsep.join([*extra_dirs, os.environ.get("PATH", "")]))
    if not found:
        raise RuntimeError(f"{name} not found: run `make system-deps` (Debian packages)")
    return found


class Proc:
    """A subprocess whose output goes to a log file that tests can read and dump."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, user: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.cleanup: Path | None = None
        self.reported = 0  # how much of the log a failure report already showed
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, preexec_fn=_demote(user),
                                     start_new_session=True)
        RUNNING.append(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    def dump(self) -> None:
        """The log's tail on stderr; only what is new if a failure report already showed it."""
        text = self.log()
        new = text[self.reported:] if self.reported else text
        title = f"{self.name} log" + (", since the failure report" if self.reported else "")
        sys.stderr.write(f"\n===== {title} =====\n{new[-LOG_TAIL:]}\n")


RUNNING: list[Proc] = []  # started and not yet stopped, in start order
LOG_TAIL = 8000  # characters of each log shown on failure


def running_logs() -> list[tuple[str, str]]:
    """(title, log tail) of every server still running: what a failed test's report shows, so
    that a module-scoped server's log is seen too (a fixture never sees its tests fail)."""
    sections = []
    for proc in RUNNING:
        text = proc.log()
        proc.reported = len(text)
        sections.append((f"{proc.name} log ({proc.log_path}, last {LOG_TAIL} characters)", text[-LOG_TAIL:]))
    return sections


@contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process at the end; dump their logs if the body failed."""
    try:
        yield procs
    except BaseException:
        for proc in procs:
            proc.dump()
        raise
    finally:
        for proc in procs:
            proc.stop()


def start_redis(log_dir: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc("redis", [binary("redis-server"), "--port", str(port), "--bind", LOOPBACK,
                          "--save", "", "--appendonly", "no"], log_dir)
    wait_for(lambda: port_open(port), 20, "redis")
    return proc, port


def _pg_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL {name} not found: run `make system-deps` (Debian postgresql)")
    return str(candidates[-1])


def start_postgres(log_dir: Path) -> tuple[Proc, str]:
    """initdb + postgres on a free port; as the `postgres` user when the tests run as root (the
    server refuses root), in a directory of its own that the user can reach."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxrtriage-pg-"))
    os.chmod(work, 0o755)
    data = work / "data"
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        record = pwd.getpwnam(user)
        os.chown(work, record.pw_uid, record.pw_gid)
    init = subprocess.run([_pg_bin("initdb"), "-D", str(data), "-U", "cxr", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True, preexec_fn=_demote(user))
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    proc = Proc("postgres", [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-h", LOOPBACK,
                             "-k", str(work)], log_dir, user=user)
    proc.cleanup = work
    url = f"postgresql+psycopg://cxr@{LOOPBACK}:{port}/postgres"

    def ready() -> bool:
        import psycopg

        with psycopg.connect(f"host={LOOPBACK} port={port} user=cxr dbname=postgres", connect_timeout=2):
            return True

    wait_for(ready, 60, "postgres", interval=0.3)
    return proc, url


def _demote(user: str | None) -> Callable[[], None] | None:
    if not user:
        return None
    record = pwd.getpwnam(user)

    def preexec() -> None:
        os.setgid(record.pw_gid)
        os.setuid(record.pw_uid)

    return preexec


class Orthanc:
    """Orthanc as the PACS, with the receiver registered as a modality."""

    def __init__(self, work: Path, log_dir: Path, receiver_ae: str, receiver_port: int) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        self.ae_title = "ORTHANC"
        config = {
            "Name": "test-pacs", "StorageDirectory": str(work / "orthanc-db"),
            "IndexDirectory": str(work / "orthanc-db"), "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port, "HttpBindAddress": LOOPBACK,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomModalities": {"cxrtriage": [receiver_ae, LOOPBACK, receiver_port]},
            "Plugins": [], "StableAge": 1,
        }
        path = work / "orthanc.json"
        path.write_text(json.dumps(config))
        self.proc = Proc("orthanc", [binary("Orthanc", ("/usr/sbin",)), str(path)], log_dir)
        wait_for(lambda: self.get("/system"), 60, "orthanc", interval=0.3)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{path}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: bytes | dict[str, object]) -> object:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        request = urllib.request.Request(self.url(path), data=payload, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            try:
                return json.loads(body)
            except ValueError:
                return body
