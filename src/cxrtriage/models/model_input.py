"""Model input: any supported file to a [0, 1] grayscale square of the model's size.

One function path shared by the worker, `predict`, training and evaluation, so that the model
sees the same pixels everywhere. DICOM files go through the PS3.3 pipeline in
`dicom/preprocess.py` first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrtriage.dicom.geometry import trim_padding  # the trim, in numpy: the review app uses it too
from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.errors import InvalidInputError

PREPROCESSING_VERSION = "3"
PREPROCESSING_CHANGES = {  # what each version changed, for model cards, oldest first
    "2": "non-square images are squashed to the square, as the training pictures were, instead of padded",
    "3": "uniform bands at the edges (padding, shutter fill) are trimmed before the picture is squashed",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def preprocessing_changes(after: str, up_to: str = PREPROCESSING_VERSION) -> dict[str, str]:
    """What each version after `after`, up to `up_to`, changed; oldest first."""
    return {version: text for version, text in PREPROCESSING_CHANGES.items()
            if int(after) < int(version) <= int(up_to)}


def image_file_to_gray(path: str | Path) -> np.ndarray:
    """A PNG or JPEG file as single-channel float32 in [0, 1]."""
    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                return np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
            return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"not a readable PNG/JPEG image: {type(exc).__name__}") from exc


def fit_to_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Trim padding (`trim_padding`), then resize to `size` x `size`, squashing a non-square
    picture to the square.

    Version 3 trims: a square picture padded to a non-square detector then reaches the network
    as the picture itself. Version 2 squashed: the training pictures were squashed to a square by
    the data's publisher (their original aspect ratio is lost), and on the shifted validation
    padding a 0.82-aspect detector image to the square (version 1) pushed normal pictures towards
    pneumonia (specificity 0.874 against 0.966 squashed; docs/model-comparison.md)."""
    if gray.ndim != 2:
        raise InvalidInputError(f"expected a 2-D image, got shape {gray.shape}")
    if min(gray.shape) < 1:
        raise InvalidInputError(f"expected a non-empty image, got shape {gray.shape}")
    gray = trim_padding(gray)
    tensor = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
    return tensor[0, 0].clamp(0.0, 1.0).numpy()


def load_gray(path: str | Path) -> np.ndarray:
    """Any supported file (DICOM, PNG, JPEG) as a [0, 1] grayscale image."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_file_to_gray(path)
    return dataset_to_gray(read_dataset(path))
