"""dicom/geometry.py: where the picture lies in an image (what the model sees, and what a heat map
covers) and the image's size in the patient, as tables of known values."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from cxrtriage.dicom.geometry import TrimBox, display_size, pixel_aspect, trim_box, trim_padding


def _picture(rows: int = 200, columns: int = 160) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.uniform(0.2, 0.9, (rows, columns)).astype(np.float32)


@pytest.mark.parametrize(("top", "bottom", "left", "right", "value"), [
    (0, 0, 0, 0, 0.0),  # nothing to trim
    (20, 20, 0, 0, 0.0),  # letterbox
    (0, 0, 30, 10, 1.0),  # white pillarbox, uneven
    (5, 0, 0, 7, 0.0),  # one side each way
])
def test_trim_box_finds_uniform_bands(top: int, bottom: int, left: int, right: int, value: float) -> None:
    picture = _picture()
    padded = np.pad(picture, ((top, bottom), (left, right)), constant_values=value)
    box = trim_box(padded)
    assert (box.top, box.bottom, box.left, box.right) == (top, top + 200, left, left + 160)
    assert (box.rows, box.columns) == padded.shape
    assert np.array_equal(trim_padding(padded), picture)


def test_a_blank_image_is_kept_whole() -> None:
    blank = np.zeros((50, 40), dtype=np.float32)
    assert trim_box(blank) == TrimBox(50, 40, 0, 50, 0, 40)
    assert trim_padding(blank) is blank


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("attributes", "aspect"), [
    ({}, 1.0),
    ({"PixelSpacing": [0.2, 0.1]}, 2.0),  # rows 0.2 mm apart, columns 0.1 mm: pixels twice as tall
    ({"ImagerPixelSpacing": [0.1, 0.2]}, 0.5),
    ({"PixelSpacing": [0.15, 0.15], "ImagerPixelSpacing": [0.2, 0.1]}, 1.0),  # Pixel Spacing first
    ({"PixelAspectRatio": [4, 3]}, 4 / 3),
    ({"PixelSpacing": [0.0, 0.1]}, 1.0),  # nonsense: square
    ({"PixelSpacing": [1.0, 0.1]}, 1.0),  # beyond 4:1, a header error: square
    ({"PixelSpacing": [0.1]}, 1.0),  # one value: square
])
def test_pixel_aspect_from_the_header(attributes: dict[str, object], aspect: float) -> None:
    assert pixel_aspect(_header(**attributes)) == pytest.approx(aspect)


@pytest.mark.parametrize(("rows", "columns", "aspect", "longest", "size"), [
    (224, 224, 1.0, 1024, (224, 224)),  # small: never blown up
    (3000, 2500, 1.0, 1024, (1024, 853)),  # large: the longer side down to the display size
    (2500, 3000, 1.0, None, (2500, 3000)),  # full size
    (224, 224, 2.0, 1024, (448, 224)),  # tall pixels: the rows stretched
    (224, 224, 0.5, 1024, (224, 448)),  # wide pixels: the columns stretched
    (1000, 1000, 2.0, 1024, (1024, 512)),
])
def test_display_size_keeps_true_proportions(rows: int, columns: int, aspect: float, longest: int | None,
                                             size: tuple[int, int]) -> None:
    assert display_size(rows, columns, aspect, longest) == size


@pytest.mark.parametrize(("height", "width", "expected"), [
    (240, 200, (20, 220, 30, 190)),
    (480, 400, (40, 440, 60, 380)),
    (120, 100, (10, 110, 15, 95)),
])
def test_trim_box_scales_with_the_shown_image(height: int, width: int, expected: tuple[int, ...]) -> None:
    box = TrimBox(rows=240, columns=200, top=20, bottom=220, left=30, right=190)
    assert box.scaled(height, width) == expected
