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

from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.errors import InvalidInputError

PREPROCESSING_VERSION = "1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


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
    """Resize so the longer side is `size`, keeping the aspect ratio, then pad with black."""
    if gray.ndim != 2:
        raise InvalidInputError(f"expected a 2-D image, got shape {gray.shape}")
    height, width = gray.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if (new_h, new_w) != (height, width):
        tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear",
                               align_corners=False, antialias=True)
    out = torch.zeros((size, size), dtype=torch.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = tensor[0, 0].clamp(0.0, 1.0)
    return out.numpy()


def load_gray(path: str | Path) -> np.ndarray:
    """Any supported file (DICOM, PNG, JPEG) as a [0, 1] grayscale image."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_file_to_gray(path)
    return dataset_to_gray(read_dataset(path))
