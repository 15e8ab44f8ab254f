"""Pixel decoding in child processes under a memory and a time limit: poison costs only the poison.

Each child (dicom/decode_child.py) is a fresh interpreter that caps its own address space with
RLIMIT_AS before importing numpy, pydicom and the decoders, and imports nothing else. Children
are long-lived (start-up is ~0.5 s, a decode a few ms) and decode one file at a time; the pool
keeps one parent thread per child, so a batch decodes on every core. Outcomes per file:

- an image, or the file's own coded reason (InvalidInputError in the child, MemoryError included);
- past `timeout_seconds`, the child is killed: `undecodable-pixels`, for that file only;
- the child dies (a decoder crashed, or the kernel killed it): it is replaced and the file is tried
  once more in the new child, since a death can also come from outside (an operator, the OOM
  killer choosing it); a second death is `undecodable-pixels`, for that file only.

No other file of the batch is affected by any of these. The child's answers are parsed as data
and checked against the limits (shape, dtype, size) before any allocation: a decoder that a file
has taken over can corrupt only its own answer.

`decode_values` asks for the modality values before VOI and the display attributes (mode
"modality", for the review app's viewer), under the same limits; its display attributes are
rebuilt from known keys and bounds (dicom/display.checked_display) before anyone sees them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

import cxrtriage
from cxrtriage.dicom.decode_child import HEADER, MAX_HEADER_BYTES
from cxrtriage.dicom.display import checked_display
from cxrtriage.dicom.preprocess import MAX_DECODED_BYTES, MAX_PIXELS
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError

logger = logging.getLogger(__name__)
Decoded = tuple[np.ndarray | None, str, str]  # image, or the coded reason and message it has none
START_SECONDS = 60.0  # a child's imports, on a loaded machine; apart from a file's time limit
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "uint8": np.dtype(np.uint8),
                                     "uint16": np.dtype(np.uint16)}
# Single-threaded numeric libraries: one decode per child, and no per-thread arenas to reserve.
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class DecodeLimits:
    memory_bytes: int = 2 * 1024**3  # each child's address space (RLIMIT_AS)
    timeout_seconds: float = 30.0  # one file's decode, from its request to its answer
    max_decoded_bytes: int = MAX_DECODED_BYTES  # checked from the header before any decoder runs


@dataclass(frozen=True)
class ModalityImage:
    """An image's modality values (mode "modality"): uint16 codes with value = code + offset and
    padding as preprocess.PADDING_CODE, or float32 values with padding as NaN; the display
    attributes (dicom/display.py) and the VOI LUT tables they list."""

    values: np.ndarray
    offset: float
    padded: bool  # some pixels are Pixel Padding Value: shown black, never windowed
    display: dict[str, Any]
    luts: list[np.ndarray]


ValuesDecoded = tuple[ModalityImage | None, str, str]
_Answer = tuple[np.ndarray | ModalityImage | None, str, str]  # what a child answers, either mode
_Answered = TypeVar("_Answered", np.ndarray, ModalityImage)


def answer_or_raise(decoded: tuple[_Answered | None, str, str]) -> _Answered:
    """What the child answered, or the file's own coded reason as an InvalidInputError."""
    answer, reason, message = decoded
    if answer is None:
        raise InvalidInputError(message or "pixel data cannot be decoded", Reason(reason))
    return answer


class ChildDied(Exception):
    """The child exited, was killed, or broke the protocol before it answered."""


class ChildTimedOut(Exception):
    """The child did not answer within the time limit."""


class PoolClosed(RuntimeError):
    """The pool was shut down while a file was waiting or decoding: nobody's fault, no result."""


def _read(fd: int, size: int, deadline: float, into: memoryview | None = None) -> bytes:
    """Exactly `size` bytes from `fd` by `deadline`, into `into` when given."""
    buffer = into if into is not None else memoryview(bytearray(size))
    got = 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ChildTimedOut()
        chunk = os.readv(fd, [buffer[got:]])
        if chunk == 0:
            raise ChildDied()
        got += chunk
    return bytes(buffer) if into is None else b""


def _write(fd: int, data: bytes | memoryview, deadline: float) -> None:
    view = memoryview(data)
    while len(view):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            raise ChildTimedOut()
        try:
            view = view[os.write(fd, view[: 1 << 20]):]
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChildDied() from exc


class Child:
    """One decoder process and its pipes."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.process: subprocess.Popen[bytes] | None = None
        self.retired = False  # the pool shut down: never started again
        self._ready = False

    def start(self) -> None:
        if self.retired:
            raise PoolClosed("the decoder pool was shut down")
        env = {**os.environ, **_CHILD_ENV}
        source = str(Path(cxrtriage.__file__).resolve().parents[1])  # importable however we were
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxrtriage.dicom.decode_child", str(self.limits.memory_bytes),
             str(self.limits.max_decoded_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            bufsize=0, start_new_session=True)  # a terminal's Ctrl-C is the parent's to handle
        self._ready = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def retire(self) -> None:
        """From another thread: kill the process; the thread using it then sees it die."""
        self.retired = True
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.kill()
        except ProcessLookupError:
            pass
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        process.wait()

    def _message(self, deadline: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        (length,) = HEADER.unpack(_read(fd, HEADER.size, deadline))
        if length > MAX_HEADER_BYTES:
            raise ChildDied()
        try:
            header = json.loads(_read(fd, length, deadline))
        except ValueError as exc:
            raise ChildDied() from exc
        if not isinstance(header, dict):
            raise ChildDied()
        return header

    def request(self, mode: str, path: str | None, sha256: str, data: bytes | None) -> _Answer:
        """One file decoded; raises ChildDied or ChildTimedOut (the child is then dead)."""
        if self.process is None or self.process.poll() is not None:
            self.kill()
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            if not self._ready:
                self._ready = self._message(time.monotonic() + START_SECONDS).get("ready") is True
                if not self._ready:
                    raise ChildDied()
            deadline = time.monotonic() + self.limits.timeout_seconds
            text = json.dumps({"mode": mode, "path": path, "sha256": sha256,
                               "size": len(data) if data is not None else 0}).encode()
            fd = self.process.stdin.fileno()
            _write(fd, HEADER.pack(len(text)) + text, deadline)
            if data is not None:
                _write(fd, data, deadline)
            return self._answer(mode, deadline)
        except (ChildDied, ChildTimedOut):
            self.kill()
            raise

    def _answer(self, mode: str, deadline: float) -> _Answer:
        assert self.process is not None and self.process.stdout is not None
        header = self._message(deadline)
        reason = str(header.get("reason", ""))
        if reason:
            if reason not in Reason._value2member_map_:
                raise ChildDied()
            return None, reason, str(header.get("message", ""))[:500]
        if mode == "modality":
            return self._values(header, deadline), "", ""
        shape, dtype = header.get("shape"), _DTYPES.get(str(header.get("dtype")))
        expected = (3, "uint8") if mode == "rgb8" else (2, "float32")
        if (dtype is None or dtype.name != expected[1] or not isinstance(shape, list)
                or len(shape) != expected[0] or not all(isinstance(n, int) and n > 0 for n in shape)
                or (mode == "rgb8" and shape[-1] != 3) or shape[0] * shape[1] > MAX_PIXELS):
            raise ChildDied()  # not an answer this child could honestly give
        pixels = np.empty(shape, dtype=dtype)
        view = memoryview(pixels.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        _read(self.process.stdout.fileno(), pixels.nbytes, deadline, view)
        return pixels, "", ""

    def _values(self, header: dict[str, Any], deadline: float) -> ModalityImage:
        """Mode "modality": the values (uint16 or float32, at most 4 bytes a decoded byte), then
        each VOI LUT (float32), all checked before anything is allocated."""
        assert self.process is not None and self.process.stdout is not None
        shape, offset = header.get("shape"), header.get("offset")
        dtype = _DTYPES.get(str(header.get("dtype")))
        if (dtype is None or dtype.name not in ("uint16", "float32") or not isinstance(shape, list)
                or len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape)
                or shape[0] * shape[1] > MAX_PIXELS
                or shape[0] * shape[1] * dtype.itemsize > 4 * self.limits.max_decoded_bytes
                or isinstance(offset, bool) or not isinstance(offset, int | float)
                or not np.isfinite(offset) or not isinstance(header.get("padded"), bool)):
            raise ChildDied()
        try:
            display, lengths = checked_display(header.get("display"), header.get("luts"))
        except ValueError as exc:
            raise ChildDied() from exc
        fd = self.process.stdout.fileno()
        values = np.empty(shape, dtype=dtype)
        _read(fd, values.nbytes, deadline, memoryview(values.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        luts = []
        for length in lengths:
            table = np.empty(length, dtype=np.float32)
            _read(fd, table.nbytes, deadline, memoryview(table.view(np.uint8)))  # type: ignore[arg-type]
            luts.append(table)
        return ModalityImage(values, float(offset), header["padded"], display, luts)


class DecoderPool:
    """Child decoders, started on first use and kept; each runs one file at a time."""

    def __init__(self, processes: int, limits: DecodeLimits | None = None) -> None:
        self.processes = max(1, processes)  # 0 (the old "decode in the worker") means one child
        self.limits = limits or DecodeLimits()
        self._idle: queue.Queue[Child] = queue.Queue()
        self._children: list[Child] = []
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _started(self) -> tuple[ThreadPoolExecutor, queue.Queue[Child]]:
        with self._lock:
            if self._executor is None:
                self._idle = queue.Queue()
                self._children = [Child(self.limits) for _ in range(self.processes)]
                for child in self._children:
                    child.start()  # now, not on first request: they import while the batch is read
                    self._idle.put(child)
                self._executor = ThreadPoolExecutor(self.processes, thread_name_prefix="decoder")
            return self._executor, self._idle

    def submit(self, path: str, sha256: str = "", mode: str = "gray") -> Future[Decoded]:
        """A stored file's image; `sha256` (when given) must still be the file's digest."""
        executor, idle = self._started()
        return cast(Future[Decoded], executor.submit(self._decode, idle, mode, path, sha256, None))

    def submit_data(self, data: bytes, mode: str = "gray") -> Future[Decoded]:
        """An uploaded file's image, decoded from its bytes."""
        executor, idle = self._started()
        return cast(Future[Decoded], executor.submit(self._decode, idle, mode, None, "", data))

    def decode(self, path: str, sha256: str = "", mode: str = "gray") -> Decoded:
        if mode == "modality":
            raise ValueError("mode 'modality' answers through decode_values")
        return self.submit(path, sha256, mode).result()

    def decode_values(self, path: str, sha256: str = "") -> ValuesDecoded:
        """A stored file's modality values and display attributes (mode "modality")."""
        executor, idle = self._started()
        future = executor.submit(self._decode, idle, "modality", path, sha256, None)
        return cast(ValuesDecoded, future.result())

    def pids(self) -> list[int]:
        with self._lock:
            return [pid for child in self._children if (pid := child.pid) is not None]

    def _decode(self, idle: queue.Queue[Child], mode: str, path: str | None, sha256: str,
                data: bytes | None) -> _Answer:
        child = idle.get()
        try:
            for attempt in (1, 2):
                try:
                    return child.request(mode, path, sha256, data)
                except ChildTimedOut:
                    if child.retired:
                        raise PoolClosed("the decoder pool was shut down") from None
                    logger.warning("decoder timed out; killed")
                    return None, Reason.UNDECODABLE_PIXELS.value, (
                        f"decoding took longer than the limit of {self.limits.timeout_seconds:g} s "
                        "(CXRTRIAGE_DECODE_TIMEOUT_SECONDS)")
                except ChildDied:
                    if child.retired:
                        raise PoolClosed("the decoder pool was shut down") from None
                    logger.warning("decoder process died; replaced", extra={"attempt": attempt})
            return None, Reason.UNDECODABLE_PIXELS.value, (
                "the decoder process died on this file twice (memory limit "
                f"{self.limits.memory_bytes} bytes, CXRTRIAGE_DECODE_MEMORY_BYTES)")
        except OSError as exc:  # no child could be started: the worker's problem, not the file's
            logger.error("decoder process could not start", extra={"error": type(exc).__name__})
            raise
        finally:
            if child.retired:
                child.kill()
            elif child.process is None:
                child.start()  # its replacement imports now, not in the next file's time
            idle.put(child)

    def shutdown(self) -> None:
        """Stop every child; decodes under way end in PoolClosed. A later submit starts anew."""
        with self._lock:
            executor, self._executor = self._executor, None
            children, self._children = self._children, []
            idle = self._idle
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for child in children:
            child.retire()
        while True:  # the idle ones are reaped here; busy ones by their thread
            try:
                idle.get_nowait().kill()
            except queue.Empty:
                break


def kill_children(pool: DecoderPool, sig: int = signal.SIGKILL) -> list[int]:
    """Signal every child of `pool` (fault tests); returns their pids."""
    pids = pool.pids()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids
