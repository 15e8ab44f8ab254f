"""Where an image's picture lies, and how large it is in the patient: pure numpy, no torch.

The model sees each image trimmed of uniform edge bands (`trim_box`, `trim_padding`) and then
squashed to its square input (models/model_input.fit_to_square). The review app shows the image
with its own proportions (`display_size`, from Pixel Spacing) and lays a heat map, which lives in
the model's square, back over the trimmed region (`TrimBox`), so the two stay in register.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PADDING_TOLERANCE = 1 / 32  # a line is padding when every pixel is this close to the edge's value
# (1/32: the ringing of JPEG baseline and JPEG 2000 lossy at the edge of a padded picture)
MIN_PADDING_FRACTION = 0.01  # per side, and at least 2 lines: a stray uniform edge line is kept
MAX_PADDING_FRACTION = 1 / 3  # per side: a longer uniform run is content (or a blank image), kept
MAX_PIXEL_ASPECT = 4.0  # a row/column spacing ratio beyond this is taken as a header error
# The heat map as data (dicom/heatmap_map.py, a fractional Segmentation on the image's own grid):
# stored value 255 is activation 1.0. Here so that the review app can read one without highdicom.
MAX_FRACTIONAL_VALUE = 255


@dataclass(frozen=True)
class TrimBox:
    """The picture inside an image of `rows` x `columns` pixels: rows top..bottom and columns
    left..right, ends exclusive."""

    rows: int
    columns: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def scaled(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the box in the image shown at `height` x `width`."""
        sy, sx = height / self.rows, width / self.columns
        top, left = round(self.top * sy), round(self.left * sx)
        bottom, right = max(top + 1, round(self.bottom * sy)), max(left + 1, round(self.right * sx))
        return top, min(bottom, height), left, min(right, width)

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "columns": self.columns, "top": self.top, "bottom": self.bottom,
                "left": self.left, "right": self.right}


def _padding_lines(lines: np.ndarray) -> int:
    """How many lines, from the first, are uniform at the first line's value."""
    edge = float(np.median(lines[0]))
    longest = int(MAX_PADDING_FRACTION * len(lines))
    if longest < 2 or not (np.abs(lines[:2] - edge) <= PADDING_TOLERANCE).all():
        return 0  # the usual case, decided on two lines of a large image
    uniform = (np.abs(lines[: longest + 1] - edge) <= PADDING_TOLERANCE).all(axis=1)
    count = int(uniform.shape[0]) if uniform.all() else int(np.argmin(uniform))
    if count < max(2, MIN_PADDING_FRACTION * len(lines)) or count > longest:
        return 0
    return count


def trim_box(gray: np.ndarray) -> TrimBox:
    """The picture without uniform bands at its edges: padding to another aspect ratio, an
    electronic shutter's fill, a letterbox. The whole image when trimming would leave nothing."""
    rows, columns = gray.shape
    top, bottom = _padding_lines(gray), _padding_lines(gray[::-1])
    left, right = _padding_lines(gray.T), _padding_lines(gray.T[::-1])
    if top + bottom >= rows or left + right >= columns:
        return TrimBox(rows, columns, 0, rows, 0, columns)
    return TrimBox(rows, columns, top, rows - bottom, left, columns - right)


def trim_padding(gray: np.ndarray) -> np.ndarray:
    """The picture without uniform bands at its edges (`trim_box`). Such bands carry no anatomy;
    left in, they change the picture's framing and the rank equalisation, and in the training
    data they were more common on normal pictures than on pneumonias (11% against 3%)."""
    box = trim_box(gray)
    if (box.height, box.width) == gray.shape:
        return gray
    return gray[box.top : box.bottom, box.left : box.right]


def pixel_aspect(header: Any) -> float:
    """Height over width of one pixel in the patient, from Pixel Spacing, else Imager Pixel
    Spacing, else Pixel Aspect Ratio; 1.0 when none says otherwise or the values make no sense.
    `header` is a pydicom Dataset (or anything with `.get`)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        ratio = _ratio(header.get(keyword))
        if ratio is not None:
            return ratio
    ratio = _ratio(header.get("PixelAspectRatio"))  # vertical \ horizontal size
    return ratio if ratio is not None else 1.0


def _ratio(value: Any) -> float | None:
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(column)) or row <= 0 or column <= 0:
        return None
    ratio = row / column
    return ratio if 1 / MAX_PIXEL_ASPECT <= ratio <= MAX_PIXEL_ASPECT else None


def display_size(rows: int, columns: int, aspect: float = 1.0, longest: int | None = None) -> tuple[int, int]:
    """(height, width) that shows `rows` x `columns` pixels of height/width `aspect` with true
    proportions: the axis with the larger pixels is stretched, then the longer side is brought
    down to `longest` (never up). None keeps every pixel."""
    if rows < 1 or columns < 1:
        raise ValueError(f"rows and columns must be positive, got {rows} x {columns}")
    height, width = (rows * aspect, float(columns)) if aspect >= 1 else (float(rows), columns / aspect)
    if longest is not None and max(height, width) > longest:
        scale = longest / max(height, width)
        height, width = height * scale, width * scale
    return max(1, round(height)), max(1, round(width))
