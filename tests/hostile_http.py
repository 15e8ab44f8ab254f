"""Hostile HTTP clients for the review app's tests and benchmarks/hostile_web.py: a chunked upload
written on a raw socket (no client library buffers it or stops it for us) that counts how many
bytes it got to send before the server answered, and a real uvicorn serving an app in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.servers import LOOPBACK, free_port, port_open, wait_for

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Upload:
    status: int  # 0: no answer came
    sent_before_answer: int  # body bytes written before the first byte of the answer arrived
    sent: int  # body bytes written in all, until the server stopped reading or closed
    seconds_to_answer: float
    closed: bool  # the server closed the connection (the write failed, or reading ended)
    answer: bytes


def chunked_post(port: int, path: str, total: int, headers: dict[str, str] | None = None,
                 prefix: bytes = b"", stall_seconds: float = 3.0) -> Upload:
    """POST `prefix` and then zeros, `total` bytes in all, with Transfer-Encoding: chunked. Stops
    when the body is out, the server closes, or a write makes no progress for `stall_seconds`
    (the server stopped reading). An answer is read concurrently, so one sent early is seen."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    sock.settimeout(stall_seconds)
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Transfer-Encoding: chunked",
             *[f"{k}: {v}" for k, v in (headers or {}).items()]]
    state: dict[str, Any] = {"sent": 0, "at_answer": None, "answer_time": None, "answer": b"", "eof": False}
    start = time.monotonic()

    def read() -> None:
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if state.get("done"):
                        return
                    continue
                if not data:
                    state["eof"] = True
                    return
                if state["at_answer"] is None:
                    state["at_answer"], state["answer_time"] = state["sent"], time.monotonic() - start
                state["answer"] += data
        except OSError:
            state["eof"] = True

    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    closed = False
    body = prefix + bytes(max(0, CHUNK - len(prefix)))
    zeros = bytes(CHUNK)
    try:
        while state["sent"] < total and not state["eof"]:
            piece = body if state["sent"] == 0 else zeros
            piece = piece[: total - state["sent"]]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            state["sent"] += len(piece)
        if state["sent"] >= total:
            sock.sendall(b"0\r\n\r\n")
    except TimeoutError:
        pass  # no progress: the server stopped reading
    except OSError:
        closed = True  # broken pipe or reset: the server closed
    deadline = time.monotonic() + 10
    while state["at_answer"] is None and not state["eof"] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the rest of a short answer
    state["done"] = True
    answer: bytes = state["answer"]
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    sock.close()
    reader.join(timeout=5)
    return Upload(status, state["at_answer"] if state["at_answer"] is not None else state["sent"],
                  state["sent"], state["answer_time"] if state["answer_time"] is not None else -1.0,
                  closed or state["eof"], answer)


@contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[int]:
    """`app` under a real uvicorn on a free loopback port, in a thread; yields the port."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: port_open(port), 30, "the review app's port")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
