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

import logging
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

from cxrtriage.config import Settings
from cxrtriage.dicom.sandbox import Decoded, DecodeLimits
from cxrtriage.dicom.sandbox import DecoderPool as _SandboxPool

if TYPE_CHECKING:
    from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
__all__ = ["Ahead", "Decoded", "DecoderPool", "limits_for", "pool_for"]


def limits_for(settings: Settings) -> DecodeLimits:
    return DecodeLimits(memory_bytes=settings.decode_memory_bytes,
                        timeout_seconds=settings.decode_timeout_seconds,
                        max_decoded_bytes=settings.max_decoded_bytes)


class DecoderPool(_SandboxPool):
    """The sandbox pool, sized and limited from the settings when it is given them."""

    @classmethod
    def for_settings(cls, settings: Settings) -> DecoderPool:
        return cls(settings.decode_processes, limits_for(settings))


def pool_for(rt: Runtime) -> DecoderPool:
    """The runtime's pool (CXRTRIAGE_DECODE_PROCESSES=0 gets one child: in-process decoding no
    longer exists)."""
    return rt.decoder_pool


class Ahead:
    """A batch's images handed to the children in order, at most `window` ahead of the worker's
    use: every child stays busy, while the worker holds only a few decoded images at a time (a
    batch of legal-but-giant images would otherwise all wait, decoded, in memory)."""

    def __init__(self, pool: DecoderPool, window: int | None = None) -> None:
        self.pool = pool
        self.window = window or pool.processes + 1
        self._pending: deque[tuple[dict[int, Future[Decoded]], int, str, str]] = deque()
        self._outstanding = 0

    def add(self, decoding: dict[int, Future[Decoded]], key: int, path: str, sha256: str) -> None:
        self._pending.append((decoding, key, path, sha256))

    def fill(self) -> None:
        while self._pending and self._outstanding < self.window:
            decoding, key, path, sha256 = self._pending.popleft()
            decoding[key] = self.pool.submit(path, sha256)
            self._outstanding += 1

    def take(self, decoding: dict[int, Future[Decoded]], key: int, path: str, sha256: str) -> Future[Decoded]:
        """The decode of `key`, handed over now if it was not yet; the next ones are handed on."""
        future = decoding.pop(key, None)
        if future is not None:
            self._outstanding -= 1
        else:
            self._pending = deque(p for p in self._pending if not (p[0] is decoding and p[1] == key))
            future = self.pool.submit(path, sha256)
        self.fill()
        return future
