"""Preprocessing parity: one picture as PNG and as DICOM in several encodings gives the same
probability, through the same function the worker and training use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.models.predict import predict_paths
from tests.conftest import BUNDLED
from tests.factory import sample_pixels

ENCODINGS = {
    "MONOCHROME2 8-bit": dict(),
    "MONOCHROME1 8-bit": dict(monochrome1=True),
    "MONOCHROME2 16-bit": dict(sixteen=True),
    "MONOCHROME1 16-bit": dict(sixteen=True, monochrome1=True),
    "RLE": dict(compress=RLELossless),
    "RLE 16-bit MONOCHROME1": dict(compress=RLELossless, sixteen=True, monochrome1=True),
    "JPEG-LS lossless": dict(compress=JPEGLSLossless),
    "JPEG 2000 lossless": dict(compress=JPEG2000Lossless),
    "implicit VR": dict(implicit=True),
}


def _write(folder: Path, name: str, pixels: np.ndarray, sixteen: bool = False,
           monochrome1: bool = False, compress: str | None = None, implicit: bool = False) -> Path:
    stored = (pixels.astype(np.uint16) * 257) if sixteen else pixels
    ds = wrap_image(stored, monochrome1=monochrome1)
    if compress:
        ds.compress(compress)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = folder / f"{name.replace(' ', '_')}.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit or None)
    return path


@pytest.mark.parametrize("package_kind", ["bundled", "random"])
def test_png_and_dicom_encodings_agree(tmp_path, tiny_package, package_kind):
    if package_kind == "bundled" and not (BUNDLED / "manifest.json").is_file():
        pytest.fail("the bundled model package is missing")
    package = BUNDLED if package_kind == "bundled" else tiny_package
    pixels = sample_pixels("pneumonia-2")
    png = tmp_path / "image.png"
    Image.fromarray(pixels).save(png)
    paths = [png] + [_write(tmp_path, name, pixels, **opts) for name, opts in ENCODINGS.items()]
    rows = {Path(r["path"]).name: r for r in predict_paths(paths, package)}
    reference = rows["image.png"]["probability"]
    for name in ENCODINGS:
        got = rows[f"{name.replace(' ', '_')}.dcm"]
        assert "error" not in got, f"{name}: {got.get('error')}"
        assert got["probability"] == pytest.approx(reference, abs=1e-3), name
