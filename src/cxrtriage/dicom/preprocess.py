"""Stored pixels to a displayable grayscale image: the DICOM grayscale pipeline (PS3.3 C.11).

Modality LUT, VOI LUT or window (or the full stored range when neither is present), MONOCHROME1 /
INVERSE inversion, then a single channel in [0, 1]. Shared by the worker, `predict`, training and
the review app. Sizing for the model lives in `models/model_input.py`; this module stays free of
torch so that the receiver never loads it.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from cxrtriage.dicom.decoding import first_frame
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError

logger = logging.getLogger(__name__)

MAX_PIXELS = 16384 * 16384


def check_pixel_contract(ds: Dataset) -> None:
    """Cheap checks that refuse an image before any pixel buffer is decoded or allocated."""
    if "PixelData" not in ds:
        raise InvalidInputError("dataset has no PixelData")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise InvalidInputError(f"Rows and Columns must be positive, got {rows}x{cols}")
    if rows * cols > MAX_PIXELS:
        raise InvalidInputError(f"image of {rows}x{cols} pixels exceeds the limit of {MAX_PIXELS}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                           "YBR_ICT", "YBR_RCT"}:
        raise InvalidInputError(f"PhotometricInterpretation {photometric!r} is not supported")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (1, 8, 16, 32):
        raise InvalidInputError(f"BitsAllocated must be 1, 8, 16 or 32, got {bits}")


def _first_frame(ds: Dataset) -> np.ndarray:
    try:
        return first_frame(ds)
    except Exception as exc:  # decoders raise many types; the reason is what matters
        raise InvalidInputError(f"pixel data cannot be decoded: {type(exc).__name__}",
                                Reason.UNDECODABLE_PIXELS) from exc


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        low, high = center - width / 2.0, center + width / 2.0
    else:
        width = max(width, 1.0)
        low, high = center - 0.5 - (width - 1) / 2.0, center - 0.5 + (width - 1) / 2.0
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def _first_value(value: object) -> float:
    """The first of several windows (VM > 1), or the only one."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _stored_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    ends = apply_modality_lut(np.array([low, high], dtype=np.float64), ds)
    return float(np.min(ends)), float(np.max(ends))


def _apply_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        lut = np.asarray(item.LUTData, dtype=np.float64).ravel()
        first = descriptor[1]
        index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(lut) - 1)
        out = lut[index]
        top = max(float(2 ** descriptor[2] - 1), float(lut.max()), 1.0)
        return np.clip(out / top, 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        return _window(values, _first_value(ds.WindowCenter), _first_value(ds.WindowWidth), function)
    low, high = _stored_range(ds)
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def _to_gray(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Luminance of a colour image; pydicom has already converted YBR data to RGB."""
    if arr.ndim == 3 and arr.shape[-1] == 3:
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        weights = np.array([0.299, 0.587, 0.114])
        return np.clip((arr.astype(np.float64) @ weights) / top, 0.0, 1.0)
    raise InvalidInputError(f"colour image with shape {arr.shape} is not supported")


def dataset_to_gray(ds: Dataset) -> np.ndarray:
    """A displayable single-channel float32 image in [0, 1], bright = dense (MONOCHROME2 sense).
    Any inconsistency in the pixel attributes is an InvalidInputError, never a crash."""
    try:
        check_pixel_contract(ds)
        return _dataset_to_gray(ds)
    except InvalidInputError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            MemoryError, NotImplementedError, RuntimeError) as exc:
        raise InvalidInputError(f"pixel attributes are inconsistent: {type(exc).__name__}") from exc


def _dataset_to_gray(ds: Dataset) -> np.ndarray:
    raw = _first_frame(ds)
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _to_gray(raw, ds).astype(np.float32)
    if raw.ndim != 2:
        raise InvalidInputError(f"grayscale pixel array must be 2-D, got shape {raw.shape}")
    padding = raw == ds.PixelPaddingValue if "PixelPaddingValue" in ds else None
    values = apply_modality_lut(raw, ds).astype(np.float64)
    gray = _apply_voi(values, ds)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:
        gray = 1.0 - gray
    if padding is not None:
        gray[padding] = 0.0
    return gray.astype(np.float32)
