"""Decoding a batch's images in other processes, so that they decode on every core.

OpenJPEG, the JPEG 2000 decoder, holds the GIL: threads decode no faster than one. The pool's
processes are spawned (never forked: a GPU worker must not fork after CUDA starts), import only
the torch-free DICOM modules, and return each file's grayscale image or its coded reason; the
worker then resizes and classifies. A pool that breaks (a process killed) is replaced, and the
images it held decode in the worker itself: a broken pool costs time, never a study.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import warnings
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.errors import InvalidInputError

logger = logging.getLogger(__name__)
Decoded = tuple[np.ndarray | None, str, str]  # image, or the coded reason and message it has none


def _quiet() -> None:
    """Pool processes log nothing: pydicom's warnings would quote patient values, and the worker
    logs each outcome with UIDs only."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def decode_file(path: str) -> Decoded:
    try:
        return dataset_to_gray(read_dataset(path)), "", ""
    except InvalidInputError as exc:  # its reason travels as a code: exceptions pickle badly
        return None, exc.reason.value, str(exc)


class DecoderPool:
    """A lazily started pool of spawned processes."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, path: str) -> Future[Decoded] | None:
        """The decoding under way, or None when the pool cannot take it (decode in-process)."""
        with self._lock:
            try:
                if self._executor is None:
                    self._executor = ProcessPoolExecutor(
                        self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet)
                return self._executor.submit(decode_file, path)
            except RuntimeError:  # broken (a process died): start a new pool next time
                logger.warning("decoder pool broken; replacing it")
                self._executor.shutdown(wait=False, cancel_futures=True)  # type: ignore[union-attr]
                self._executor = None
                return None

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
