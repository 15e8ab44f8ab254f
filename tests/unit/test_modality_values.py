"""The viewer's data from a dataset (dicom/preprocess.modality_values, dicom/display.py), and the
parent's check of what a decoder child says about it (checked_display): tables of known values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrtriage.dicom.display import MAX_TEXT, MAX_WINDOWS, checked_display, display_attributes
from cxrtriage.dicom.preprocess import PADDING_CODE, dataset_to_gray, modality_values
from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.errors import InvalidInputError, LimitExceededError

PIXELS = np.array([[0, 100, 200], [300, 4000, 4095]], dtype=np.uint16)


def _ds(pixels: np.ndarray = PIXELS, **attributes: Any) -> Dataset:
    return wrap_image(pixels, bits_stored=12, **attributes)


@pytest.mark.parametrize(("attributes", "dtype", "offset", "values"), [
    ({}, "uint16", 0.0, PIXELS.astype(float)),  # slope 1, intercept 0
    ({"RescaleSlope": 1, "RescaleIntercept": -1024}, "uint16", -1024.0, PIXELS - 1024.0),  # CT-like HU
    ({"RescaleSlope": 2, "RescaleIntercept": 5}, "uint16", 5.0, PIXELS * 2 + 5.0),
    ({"RescaleSlope": -1, "RescaleIntercept": 4095}, "uint16", 0.0, 4095.0 - PIXELS),
    ({"RescaleSlope": 0.5, "RescaleIntercept": 3}, "float32", 0.0, PIXELS * 0.5 + 3),  # not whole numbers
    ({"RescaleSlope": 20, "RescaleIntercept": 0}, "float32", 0.0, PIXELS * 20.0),  # spans more than 65535
])
def test_modality_values_are_exact(attributes: dict[str, Any], dtype: str, offset: float,
                                   values: np.ndarray) -> None:
    codes, found_offset, padded = modality_values(_ds(**attributes))
    assert (codes.dtype.name, found_offset, padded) == (dtype, offset, False)
    assert np.array_equal(codes.astype(np.float64) + found_offset, values.astype(np.float64))


def test_padding_is_marked_not_windowed() -> None:
    codes, offset, padded = modality_values(_ds(PixelPaddingValue=4095))
    assert padded and codes[1, 2] == PADDING_CODE
    assert (offset, int(codes[1, 1])) == (0.0, 4000)
    values, _, padded = modality_values(_ds(PixelPaddingValue=4095, RescaleSlope=0.5, RescaleIntercept=0))
    assert padded and np.isnan(values[1, 2]) and values[1, 1] == 2000.0


def test_a_modality_lut_sequence_is_applied() -> None:
    ds = _ds()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [2 * v for v in range(4096)])
    ds.ModalityLUTSequence = Sequence([item])
    del ds.RescaleSlope, ds.RescaleIntercept
    codes, offset, _ = modality_values(ds)
    assert np.array_equal(codes + offset, PIXELS * 2.0)


@pytest.mark.parametrize("ds", [wrap_image(np.zeros((4, 4), dtype=np.uint8)), _ds()], ids=["8-bit", "12-bit"])
def test_the_decode_limits_hold(ds: Dataset) -> None:
    """One byte under what decoding needs is refused before any decoder runs."""
    needed = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    modality_values(ds, needed)
    with pytest.raises(LimitExceededError, match="CXRTRIAGE_MAX_DECODED_BYTES"):
        modality_values(ds, needed - 1)


def test_colour_has_no_modality_values() -> None:
    ds = wrap_image(np.zeros((4, 4), dtype=np.uint8))
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.PixelData = bytes(4 * 4 * 3)
    with pytest.raises(InvalidInputError, match="grayscale only"):
        modality_values(ds)


def test_display_attributes_name_every_window_and_what_the_preview_shows() -> None:
    ds = _ds(WindowCenter=[2000, 1000, 40], WindowWidth=[4000, 500, -3], PixelSpacing=[0.1, 0.2],
             WindowCenterWidthExplanation=["NORMAL", "HARD\x07" + "x" * 50, "BAD"], monochrome1=True,
             VOILUTFunction="SIGMOID", Modality="CR")
    display, luts = display_attributes(ds)
    assert display["windows"] == [{"center": 2000.0, "width": 4000.0, "explanation": "NORMAL"},
                                  {"center": 1000.0, "width": 500.0, "explanation": "HARD" + "x" * 50}]
    assert display["voi_function"] == "SIGMOID"
    assert (display["photometric"], display["inverted"]) == ("MONOCHROME1", True)
    assert display["default"] == {"kind": "window", "index": 0} and luts == []
    assert display["spacing"] == {"PixelSpacing": [0.1, 0.2]} and display["stored_range"] == [0.0, 4095.0]
    assert checked_display(display, [])[0] == display  # what the child says, the parent accepts


def test_a_voi_lut_comes_as_a_table_and_is_what_the_preview_applies() -> None:
    ds = _ds(WindowCenter=100, WindowWidth=50)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "US", list(range(4095, -1, -1)))
    item.LUTExplanation = "REVERSED"
    ds.VOILUTSequence = Sequence([item])
    display, luts = display_attributes(ds)
    assert display["default"] == {"kind": "voi_lut", "index": 0}
    assert display["voi_luts"] == [{"first_mapped": 0, "bits": 12, "explanation": "REVERSED"}]
    assert luts[0].dtype == np.float32 and luts[0][0] == 4095 and luts[0][-1] == 0
    gray = dataset_to_gray(ds)  # the preview: the LUT, not the window
    assert gray[0, 0] == pytest.approx(1.0) and gray[1, 2] == pytest.approx(0.0)


def _good() -> dict[str, Any]:
    return display_attributes(_ds(WindowCenter=2000, WindowWidth=4000))[0]


@pytest.mark.parametrize("broken", [
    lambda d: {**d, "extra": 1},
    lambda d: {k: v for k, v in d.items() if k != "windows"},
    lambda d: {**d, "windows": [{"center": "NaN", "width": 1.0, "explanation": ""}]},
    lambda d: {**d, "windows": [{"center": float("inf"), "width": 1.0, "explanation": ""}]},
    lambda d: {**d, "windows": [{"center": 1.0, "width": 1.0, "explanation": "x" * (MAX_TEXT + 1)}]},
    lambda d: {**d, "windows": [d["windows"][0]] * (MAX_WINDOWS + 1)},
    lambda d: {**d, "windows": ["not a window"]},
    lambda d: {**d, "voi_luts": [{"first_mapped": 0, "bits": 12, "explanation": ""}]},  # no length for it
    lambda d: {**d, "stored_range": [0.0]},
    lambda d: {**d, "spacing": {"PatientName": [1.0, 1.0]}},
    lambda d: {**d, "default": {"kind": "exec"}},
    lambda d: {**d, "photometric": ["MONOCHROME2"]},
    lambda d: ["not", "a", "dict"],
])
def test_the_parent_refuses_what_no_honest_child_says(broken: Any) -> None:
    with pytest.raises(ValueError):
        checked_display(broken(_good()), [])


@pytest.mark.parametrize("lengths", [[0], [65537], [True], ["12"], None])
def test_lut_lengths_are_bounded(lengths: Any) -> None:
    display = {**_good(), "voi_luts": [{"first_mapped": 0, "bits": 12, "explanation": ""}]}
    with pytest.raises(ValueError):
        checked_display(display, lengths)
