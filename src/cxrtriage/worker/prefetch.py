"""The worker's decoder pool: every image of a batch is decoded in a child process.

The children (dicom/sandbox.py) are spawned fresh interpreters, never forks (a GPU worker must
not fork after CUDA starts), each under CXRTRIAGE_DECODE_MEMORY_BYTES of address space and
CXRTRIAGE_DECODE_TIMEOUT_SECONDS a file. They verify each file's sha256 against the index, and
return its grayscale image or its coded reason; the worker then resizes and classifies. A file
that kills or exhausts its child costs only its own image: the child is replaced, and every
other file of the batch is decoded as usual. Nothing is decoded in the worker process itself,
whatever CXRTRIAGE_DECODE_PROCESSES says (0 means one child).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from cxrtriage.config import Settings
from cxrtriage.dicom.sandbox import Decoded, DecodeLimits
from cxrtriage.dicom.sandbox import DecoderPool as _SandboxPool

__all__ = ["Ahead", "Decoded", "DecoderPool", "limits_for"]
T = TypeVar("T")


def limits_for(settings: Settings) -> DecodeLimits:
    return DecodeLimits(memory_bytes=settings.decode_memory_bytes,
                        timeout_seconds=settings.decode_timeout_seconds,
                        max_decoded_bytes=settings.max_decoded_bytes)


class DecoderPool(_SandboxPool):
    """The sandbox pool, sized and limited from the settings when it is given them."""

    @classmethod
    def for_settings(cls, settings: Settings) -> DecoderPool:
        return cls(settings.decode_processes, limits_for(settings))


class Ahead:
    """Images decoded in the children and then prepared (`then`, the resize to the model's
    input) in this process's threads, one thread a child, in the order they were submitted.

    Nothing waits for the worker to ask: a batch decodes while the one before it runs the
    network, and each image is prepared as soon as its child returns it. Only the small model
    inputs pile up; a full-size decoded image is held by its thread just while it is prepared,
    so at most one a child is in memory (a batch of legal-but-giant images never all waits,
    decoded, in the worker)."""

    def __init__(self, pool: DecoderPool) -> None:
        self.pool = pool
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, path: str, sha256: str, then: Callable[[Decoded], T]) -> Future[T]:
        """`then` of the stored file's decoded image (or of its coded failure)."""
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.pool.processes, thread_name_prefix="prepare")
            threads = self._threads
        # PoolClosed or CancelledError from the decode: the worker is stopping
        return threads.submit(lambda: then(self.pool.submit(path, sha256).result()))

    def shutdown(self) -> None:
        """Drop what is still queued; a later submit starts new threads."""
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
