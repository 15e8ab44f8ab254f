"""Decoder speed and agreement per transfer syntax, on a 1024 x 1024 radiograph encoded by
pydicom's encoders and by dcmtk's dcmcjpeg: every installed pydicom plugin, its time per image,
and its largest difference from the original (lossless) or from the other plugins (lossy).
The choice in src/cxrtriage/dicom/decoding.py (PREFERRED_PLUGIN) is read off this table.

Run: make benchmark   (or .venv/bin/python -m benchmarks.decoders)
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless
from tests.factory import sample_pixels

from cxrtriage.dicom.decoding import PREFERRED_PLUGIN
from cxrtriage.dicom.wrap import wrap_image

LOSSY_TOLERANCE = 2  # grey levels two plugins may differ by on one lossy file (IDCT rounding)


def original(bits: int) -> np.ndarray:
    base = np.kron(sample_pixels("pneumonia-1").astype(np.uint16), np.ones((5, 5), np.uint16))[:1024, :1024]
    return np.ascontiguousarray(base << (bits - 8) if bits > 8 else base).astype(
        np.uint16 if bits > 8 else np.uint8)


def dataset(pixels: np.ndarray, bits: int) -> Dataset:
    ds = wrap_image(pixels.astype(np.uint16), study_uid="1.2.826.0.1.3680043.10.1367.77")
    if bits == 8:
        ds.PixelData, ds.BitsAllocated = pixels.astype(np.uint8).tobytes(), 8
    ds.BitsStored, ds.HighBit = bits, bits - 1
    return ds


def encoded(folder: Path) -> list[tuple[str, Dataset, np.ndarray, bool]]:
    """(name, dataset, original pixels, lossless) for each syntax we can make here."""
    out = []
    twelve = original(12)
    for syntax, kwargs, lossless in ((RLELossless, {}, True), (JPEGLSLossless, {}, True),
                                     (JPEG2000Lossless, {}, True),
                                     (JPEGLSNearLossless, {"jls_error": 2}, False),
                                     (JPEG2000, {"j2k_cr": [10]}, False)):
        ds = dataset(twelve, 12)
        ds.compress(syntax, **kwargs)
        out.append((syntax.name, ds, twelve, lossless))
    for option, bits, lossless in (("+e1", 12, True), ("+eb", 8, False), ("+ee", 12, False)):
        pixels = original(bits)
        source, target = folder / f"in{option}.dcm", folder / f"out{option}.dcm"
        dataset(pixels, bits).save_as(source, enforce_file_format=True)
        subprocess.run(["dcmcjpeg", option, str(source), str(target)], check=True, capture_output=True)
        ds = pydicom.dcmread(target)
        out.append((ds.file_meta.TransferSyntaxUID.name, ds, pixels, lossless))
    return out


def timed(ds: Dataset, plugin: str, repeats: int = 5) -> tuple[float, np.ndarray]:
    pixel_array(ds, decoding_plugin=plugin)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        arr = pixel_array(ds, decoding_plugin=plugin)
    return (time.perf_counter() - start) / repeats * 1000, arr


@dataclass(frozen=True)
class Row:
    syntax: str  # the transfer syntax's keyword, e.g. RLELossless
    plugin: str
    ms: float
    max_diff: int
    ok: bool
    ratio_to_fastest: float
    chosen: bool


def measure() -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _name, ds, pixels, lossless in encoded(Path(tmp)):
            syntax = ds.file_meta.TransferSyntaxUID
            results = {}
            for plugin in get_decoder(syntax).available_plugins:
                try:
                    results[plugin] = timed(ds, plugin)
                except Exception:  # a plugin that cannot read this variant (pillow: 12-bit JPEG)
                    continue
            fastest = min(results, key=lambda p: results[p][0])
            reference = results[fastest][1]
            for plugin, (ms, arr) in sorted(results.items(), key=lambda kv: kv[1][0]):
                diff = int(np.abs(arr.astype(np.int64) - (pixels if lossless else reference)).max())
                rows.append(Row(syntax.keyword, plugin, ms, diff,
                                diff == 0 if lossless else diff <= LOSSY_TOLERANCE,
                                ms / results[fastest][0], PREFERRED_PLUGIN.get(str(syntax)) == plugin))
    return rows


def main() -> None:
    print("\nDecoders: ms per 1024 x 1024 image; max |difference| from the original (lossless) "
          f"or between plugins (lossy, tolerance {LOSSY_TOLERANCE})")
    for row in measure():
        print(f"  {row.syntax:22s} {row.plugin:10s} {row.ms:7.1f} ms  max diff {row.max_diff:3d} "
              f"{'ok' if row.ok else 'DIFFERS'}  ratio to fastest {row.ratio_to_fastest:5.2f}"
              f"{'  <- chosen' if row.chosen else ''}")


if __name__ == "__main__":
    main()
