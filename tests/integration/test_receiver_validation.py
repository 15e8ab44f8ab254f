"""The receiver's cheap checks on files other software wrote: a valid encoding is never refused."""

from __future__ import annotations

import warnings

import pydicom
import pytest

from cxrtriage.dicom.receiver import CANNOT_UNDERSTAND, SUCCESS, validate_dataset
from tests.third_party import PYDICOM_FILES


def _status(ds: pydicom.Dataset) -> int:
    return validate_dataset(ds, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                            str(ds.file_meta.TransferSyntaxUID))[0]


@pytest.mark.parametrize(("name", "expected"), [
    ("SC_ybr_full_422_uncompressed.dcm", SUCCESS),  # 4:2:2 subsampled: 2 bytes a pixel, not 3
    ("SC_rgb_small_odd.dcm", SUCCESS),  # odd length, padded
    ("SC_rgb_small_odd_big_endian.dcm", SUCCESS),
    ("MR_small.dcm", SUCCESS),
    ("MR_truncated.dcm", CANNOT_UNDERSTAND),  # pixel data shorter than Rows x Columns x bits
])
def test_native_pixel_length_check(name: str, expected: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(PYDICOM_FILES / name, force=True)
    assert _status(ds) == expected


def test_a_truncated_422_file_is_still_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(PYDICOM_FILES / "SC_ybr_full_422_uncompressed.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert _status(ds) == CANNOT_UNDERSTAND
