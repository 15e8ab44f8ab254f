"""The preferred decoder of each transfer syntax reads what other software wrote (dcmtk's
dcmcjpeg, GDCM's gdcmconv, pydicom's encoders) exactly as the original for lossless syntaxes,
and as pydicom's own choice within the stated tolerance for lossy ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless, RLELossless

from cxrtriage.dicom.decoding import PREFERRED_PLUGIN, first_frame
from cxrtriage.dicom.wrap import wrap_image
from tests.factory import sample_pixels
from tests.servers import binary

LOSSY_TOLERANCE = 2  # grey levels, as benchmarks/decoders.py checks


def _source(tmp_path: Path, bits: int) -> tuple[Path, np.ndarray]:
    base = np.kron(sample_pixels("pneumonia-1").astype(np.uint16), np.ones((3, 3), np.uint16))
    pixels = (base << (bits - 8)).astype(np.uint16) if bits > 8 else base.astype(np.uint8)
    ds = wrap_image(pixels.astype(np.uint16), study_uid="1.2.826.0.1.3680043.10.1367.78")
    if bits == 8:
        ds.PixelData, ds.BitsAllocated = pixels.tobytes(), 8
    ds.BitsStored, ds.HighBit = bits, bits - 1
    path = tmp_path / f"source{bits}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pixels


@pytest.mark.parametrize(("tool", "bits", "lossless"), [
    (["dcmcjpeg", "+e1"], 12, True),  # JPEG lossless, first-order prediction
    (["dcmcjpeg", "+eb"], 8, False),  # JPEG baseline
    (["dcmcjpeg", "+ee"], 12, False),  # JPEG extended, 12 bits
    (["dcmcrle"], 12, True),  # dcmtk's RLE
    (["gdcmconv", "--j2k"], 12, True),  # GDCM's JPEG 2000 (lossless by default)
    (["gdcmconv", "--jpegls"], 12, True),  # GDCM's JPEG-LS
])
def test_files_written_by_other_tools(tmp_path: Path, tool: list[str], bits: int, lossless: bool) -> None:
    source, pixels = _source(tmp_path, bits)
    target = tmp_path / "encoded.dcm"
    subprocess.run([binary(tool[0]), *tool[1:], str(source), str(target)], check=True, capture_output=True)
    ds = pydicom.dcmread(target)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    ours = first_frame(ds)
    if lossless:
        assert np.array_equal(ours, pixels)
    else:
        assert np.abs(ours.astype(int) - pixel_array(ds).astype(int)).max() <= LOSSY_TOLERANCE


@pytest.mark.parametrize(("syntax", "kwargs"), [(RLELossless, {}), (JPEGLSLossless, {}),
                                                (JPEGLSNearLossless, {"jls_error": 2})])
def test_pydicom_encoded_multiframe_decodes_its_first_frame_only(tmp_path: Path, syntax, kwargs) -> None:
    _, pixels = _source(tmp_path, 12)
    frames = np.stack([pixels, pixels[::-1], pixels[:, ::-1]])
    ds = wrap_image(pixels.astype(np.uint16), study_uid="1.2.826.0.1.3680043.10.1367.79")
    ds.BitsStored, ds.HighBit, ds.NumberOfFrames = 12, 11, 3
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.compress(syntax, **kwargs)
    assert syntax in PREFERRED_PLUGIN
    ours = first_frame(ds)
    assert ours.shape == pixels.shape
    assert np.abs(ours.astype(int) - pixels.astype(int)).max() <= kwargs.get("jls_error", 0)


def test_htj2k_written_by_openjph_decodes_exactly(tmp_path: Path) -> None:
    from tests.factory import htj2k_radiograph

    ds, pixels = htj2k_radiograph(tmp_path)
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(first_frame(pydicom.dcmread(path)), pixels)
