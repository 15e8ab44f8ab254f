"""Fuzzing the decoders through the worker's decoder children: a bounded mutation loop over
pydicom's bundled test files, our samples and every syntax we encode (byte flips in the pixel
data, truncations, absurd Rows, Columns, BitsAllocated, SamplesPerPixel and frame counts).
Every outcome is a decoded image or a coded reason, no decode outlasts the time limit by more
than the cost of killing a child, and the test process itself is never harmed."""

from __future__ import annotations

import os
import random
import time
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from cxrtriage.dicom.sandbox import DecodeLimits, DecoderPool
from cxrtriage.domain import Reason
from tests.hostile_pixels import encoded
from tests.third_party import PYDICOM_FILES

BUDGET_SECONDS = float(os.environ.get("FUZZ_DECODE_SECONDS", "40"))
TIMEOUT = 5.0
REASONS = {reason.value for reason in Reason}
ATTRIBUTES = {"Rows": [0, 1, 65535, 47], "Columns": [0, 1, 65535, 65], "BitsAllocated": [1, 8, 16, 32, 12],
              "SamplesPerPixel": [3, 0, 4], "NumberOfFrames": [2, 0, 2**31 - 1, -1]}
REPO = Path(__file__).resolve().parents[2]


def _seeds() -> list[bytes]:
    paths = sorted(p for p in PYDICOM_FILES.rglob("*.dcm") if p.stat().st_size <= 2_000_000)
    paths += sorted((REPO / "samples").glob("*.dcm"))
    seeds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception:
                continue
            if "PixelData" in ds and int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) <= 1 << 20:
                seeds.append(path.read_bytes())
        for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGBaseline8Bit):
            buffer = BytesIO()
            encoded(syntax, 96, 80).save_as(buffer, enforce_file_format=True)
            seeds.append(buffer.getvalue())
    return seeds


def _mutant(seed: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "flip", "cut", "attribute"])
    if kind == "flip":
        data = bytearray(seed)
        start = len(data) // 5
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(start, len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == "cut":
        return seed[: rng.randrange(len(seed) // 4, len(seed))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(seed), force=True)
        attribute = rng.choice(list(ATTRIBUTES))
        try:
            setattr(ds, attribute, rng.choice(ATTRIBUTES[attribute]))
            buffer = BytesIO()
            ds.save_as(buffer)
        except Exception:  # pydicom cannot encode it, so no peer could send it either
            return seed
    return buffer.getvalue()


def _check(outcome: tuple[np.ndarray | None, str, str]) -> str:
    image, reason, message = outcome
    if image is None:
        assert reason in REASONS and message, outcome
        return reason
    assert image.dtype == np.float32 and image.ndim == 2 and reason == ""
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    return "decoded"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_files_decode_or_are_refused_within_the_time_limit(tmp_path: Path) -> None:
    rng = random.Random(17)
    seeds = _seeds()
    assert len(seeds) > 20
    pool = DecoderPool(2, DecodeLimits(memory_bytes=1024**3, timeout_seconds=TIMEOUT))
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + BUDGET_SECONDS
    count = 0
    try:
        while time.monotonic() < deadline:
            batch = []
            for slot in range(8):  # the next batch rewrites these files once this one is done
                path = tmp_path / f"mutant{slot}.dcm"
                path.write_bytes(_mutant(rng.choice(seeds), rng))
                batch.append((time.monotonic(), pool.submit(str(path))))
                count += 1
            for started, future in batch:
                outcome = future.result(timeout=2 * (TIMEOUT + 10) * len(batch))
                key = _check(outcome)
                outcomes[key] = outcomes.get(key, 0) + 1
                assert time.monotonic() - started < len(batch) * (TIMEOUT + 10)
        print(f"\n{count} mutants: {outcomes}")
        assert count >= 100 and outcomes.get("decoded", 0) > 0
        sample = REPO / "samples" / "pneumonia-1.dcm"
        assert _check(pool.decode(str(sample))) == "decoded"  # the children still work
    finally:
        pool.shutdown()
