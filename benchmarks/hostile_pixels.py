"""What a hostile file costs the worker's decode, against an honest one: peak RSS of the decoder
child and of the worker itself, and wall time per file, through the worker's decoder pool
(dicom/sandbox.py) under the default limits.

- honest: a 1024 x 1024 12-bit radiograph, JPEG 2000 lossless (the reference, decoded);
- lying_j2k: the same file with its SIZ claiming 60000 x 60000 under Rows = Columns = 1024
  (OpenJPEG would allocate 7.2 GB for it); refused from the codestream header;
- rgb32_giant: a 16383 x 16383 RGB header at 32 bits a sample (3.2 GB decoded) in a few bytes;
  refused by CXRTRIAGE_MAX_DECODED_BYTES;
- memory_hog: an honest-looking 8192 x 8192 16-bit RLE image (2 MB stored, 128 MiB decoded and
  256 MiB as float32) in a child given 400 MB: the child dies, the file gets undecodable-pixels.

Each case gets a fresh one-child pool, warmed on a 16 x 16 image, so the child's VmHWM is that
case's peak. Ratios are to the honest case.

Run: .venv/bin/python -m benchmarks.hostile_pixels
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless
from tests.hostile_pixels import encoded, lying_j2k, memory_hog, rgb32_giant, save

from benchmarks.report import Report
from cxrtriage.dicom.sandbox import DecodeLimits, DecoderPool
from cxrtriage.dicom.wrap import wrap_image

REPEATS = 5


def _status_mb(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _case(path: Path, tiny: Path, limits: DecodeLimits) -> tuple[float, float | None, float, str]:
    """(median ms, child peak RSS MB or None when the child died, worker RSS growth MB, reason)."""
    pool = DecoderPool(1, limits)
    try:
        pool.decode(str(tiny))
        worker_before = _status_mb("self", "VmRSS")
        times, reason, peak = [], "", None
        for _ in range(REPEATS):
            [pid] = pool.pids()
            start = time.perf_counter()
            _, reason, _ = pool.decode(str(path))
            times.append((time.perf_counter() - start) * 1000)
            peak = _status_mb(pid, "VmHWM") if pool.pids() == [pid] else None  # None: it died
        growth = _status_mb("self", "VmRSS") - worker_before
        return statistics.median(times), peak, growth, reason or "decoded"
    finally:
        pool.shutdown()


def measure(report: Report) -> None:
    defaults = DecodeLimits()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = save(wrap_image(np.zeros((16, 16), np.uint8)), folder / "tiny.dcm")
        cases: dict[str, tuple[Callable[[], Path], DecodeLimits]] = {
            "honest": (lambda: save(encoded(JPEG2000Lossless, 1024, 1024, 12), folder / "honest.dcm"),
                       defaults),
            "lying_j2k": (lambda: save(lying_j2k(1024, 1024), folder / "lying.dcm"), defaults),
            "rgb32_giant": (lambda: save(rgb32_giant(), folder / "giant.dcm"), defaults),
            "memory_hog": (lambda: memory_hog(folder / "hog.dcm"),
                           DecodeLimits(memory_bytes=400 * 1024**2)),
        }
        results = {name: _case(build(), tiny, limits) for name, (build, limits) in cases.items()}
    report.note(f"hostile pixels: {REPEATS} decodes per case, one warmed child each; default limits "
                f"{defaults.memory_bytes} bytes of address space, {defaults.timeout_seconds:g} s, "
                f"{defaults.max_decoded_bytes} decoded bytes")
    ms0, rss0, _, _ = results["honest"]
    for name, (ms, rss, growth, reason) in results.items():
        report.note(f"{name}: {reason}" + ("" if rss is not None else "; its child died at its limit"))
        report.add(f"hostile_pixels_{name}_ms", ms)
        report.add(f"hostile_pixels_{name}_child_peak_rss_mb", rss, 1)
        report.add(f"hostile_pixels_{name}_worker_rss_growth_mb", growth, 1)
        if name != "honest":
            report.ratio(f"hostile_pixels_{name}_ms_ratio_to_honest", ms, ms0)
            report.ratio(f"hostile_pixels_{name}_child_peak_rss_ratio_to_honest", rss, rss0)


def main() -> None:
    logging.getLogger("cxrtriage.dicom.sandbox").setLevel(logging.ERROR)  # the hog's children die
    report = Report()
    measure(report)
    report.finish()


if __name__ == "__main__":
    main()
