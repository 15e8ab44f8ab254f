"""`cxrtriage serve`: the receiver (with its scheduler) and a worker as child processes, restarted
if they die, stopped together."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

logger = logging.getLogger(__name__)


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cxrtriage.cli", *args])


def supervise(children: dict[str, list[str]]) -> int:
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    procs = {name: _spawn(args) for name, args in children.items()}
    logger.info("serving", extra={name: p.pid for name, p in procs.items()})
    while not stopping:
        time.sleep(0.5)
        for name, proc in list(procs.items()):
            if proc.poll() is not None and not stopping:
                logger.warning("child exited; restarting", extra={"child": name, "code": proc.returncode})
                time.sleep(1.0)
                procs[name] = _spawn(children[name])
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0
