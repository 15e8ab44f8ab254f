"""Stored pixels to a displayable grayscale image: the DICOM grayscale pipeline (PS3.3 C.11).

Modality LUT, VOI LUT or window (or the full stored range when neither is present), MONOCHROME1 /
INVERSE inversion, then a single channel in [0, 1]. Shared by the worker, `predict`, training and
the review app. Sizing for the model lives in `models/model_input.py`; this module stays free of
torch so that the receiver never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from cxrtriage.dicom.codestream import check_codestream
from cxrtriage.dicom.decoding import first_frame
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError, LimitExceededError

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PIXELS = 16384 * 16384
# Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames: what decoding all frames
# would allocate. The default equals the instance limit (a native file that may be stored may be
# decoded); a chest radiograph is at most ~40 MB (4300 x 4300 x 16 bits), while 16383 x 16383 RGB
# at 32 bits a sample, which MAX_PIXELS alone let through, is 3.2 GB.
MAX_DECODED_BYTES = 256 * 1024 * 1024
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}


def _count(ds: Dataset, keyword: str, default: int) -> int:
    """A pixel attribute as one int; a list, text or junk is refused, not a TypeError."""
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{keyword} must be a single integer") from exc


def decoded_bytes(ds: Dataset) -> int:
    """What decoding every frame allocates: bit-packed (1-bit) pixels are unpacked to bytes."""
    rows, cols = _count(ds, "Rows", 0), _count(ds, "Columns", 0)
    samples, frames = _count(ds, "SamplesPerPixel", 1), max(_count(ds, "NumberOfFrames", 1), 1)
    return rows * cols * samples * frames * max(_count(ds, "BitsAllocated", 0), 8) // 8


def check_pixel_contract(ds: Dataset, max_decoded_bytes: int = MAX_DECODED_BYTES,
                         transfer_syntax: str | None = None) -> None:
    """Cheap checks that refuse an image before any pixel buffer is decoded or allocated: the
    attributes, the bytes decoding would allocate, and the codestream's own header (read from
    the first fragment) against them. `transfer_syntax` defaults to the file meta's."""
    if "PixelData" not in ds:
        raise InvalidInputError("dataset has no PixelData")
    rows, cols = _count(ds, "Rows", 0), _count(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise InvalidInputError(f"Rows and Columns must be positive, got {rows}x{cols}")
    if rows * cols > MAX_PIXELS:
        raise InvalidInputError(f"image of {rows}x{cols} pixels exceeds the limit of {MAX_PIXELS}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _PHOTOMETRIC:
        raise InvalidInputError(f"PhotometricInterpretation {photometric!r} is not supported")
    bits = _count(ds, "BitsAllocated", 0)
    if bits not in (1, 8, 16, 32):
        raise InvalidInputError(f"BitsAllocated must be 1, 8, 16 or 32, got {bits}")
    samples = _count(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise InvalidInputError(f"SamplesPerPixel must be 1 or 3, got {samples}")
    if _count(ds, "NumberOfFrames", 1) < 0:
        raise InvalidInputError("NumberOfFrames must not be negative")
    if decoded_bytes(ds) > max_decoded_bytes:
        raise LimitExceededError(f"decoded pixel data would exceed the limit of {max_decoded_bytes} "
                                 "bytes (CXRTRIAGE_MAX_DECODED_BYTES)")
    if transfer_syntax is None:
        meta = getattr(ds, "file_meta", None)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    pixel_data = ds.PixelData
    if not isinstance(pixel_data, bytes | bytearray):
        raise InvalidInputError("PixelData must be bytes")
    check_codestream(transfer_syntax, pixel_data, rows, cols, samples, bits)


def _first_frame(ds: Dataset) -> np.ndarray:
    try:
        return first_frame(ds)
    except Exception as exc:  # decoders raise many types; the reason is what matters
        raise InvalidInputError(f"pixel data cannot be decoded: {type(exc).__name__}",
                                Reason.UNDECODABLE_PIXELS) from exc


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2, computed in `values` itself (consumed): a
    second full-size array would double the decoder's peak memory."""
    if function == "SIGMOID":
        values -= center
        values *= -4.0 / max(width, 1e-6)
        np.exp(values, out=values)
        values += 1.0
        return np.reciprocal(values, out=values)
    if function == "LINEAR_EXACT":
        low, high = center - width / 2.0, center + width / 2.0
    else:
        width = max(width, 1.0)
        low, high = center - 0.5 - (width - 1) / 2.0, center - 0.5 + (width - 1) / 2.0
    return _scale(values, low, high)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] to [0, 1], clipped, in place."""
    values -= low
    values *= 1.0 / max(high - low, 1e-6)
    return np.clip(values, 0.0, 1.0, out=values)


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
    """Values of interest to [0, 1]; `values` (float32) is consumed."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        lut = np.asarray(item.LUTData, dtype=np.float32).ravel()
        np.rint(values, out=values)
        values -= descriptor[1]
        np.clip(values, 0, len(lut) - 1, out=values)
        out = lut[values.astype(np.int32)]  # int32 index: half the memory of the default int64
        top = max(float(2 ** descriptor[2] - 1), float(lut.max()), 1.0)
        out *= 1.0 / top
        return np.clip(out, 0.0, 1.0, out=out)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        return _window(values, _first_value(ds.WindowCenter), _first_value(ds.WindowWidth), function)
    return _scale(values, *_stored_range(ds))


def _to_gray(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Luminance of a colour image; pydicom has already converted YBR data to RGB. Summed a
    channel at a time in float32, never as one float64 copy of all three."""
    if arr.ndim == 3 and arr.shape[-1] == 3:
        gray = np.zeros(arr.shape[:2], dtype=np.float32)
        for channel, weight in enumerate((0.299, 0.587, 0.114)):
            gray += arr[..., channel].astype(np.float32) * np.float32(weight)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        gray *= 1.0 / top
        return np.clip(gray, 0.0, 1.0, out=gray)
    raise InvalidInputError(f"colour image with shape {arr.shape} is not supported")


def dataset_to_gray(ds: Dataset, max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """A displayable single-channel float32 image in [0, 1], bright = dense (MONOCHROME2 sense).
    Any inconsistency in the pixel attributes is an InvalidInputError, never a crash.

    Peak memory is the stored frame plus about two float32 copies of it: everything after the
    decode works in place."""
    return _checked(_dataset_to_gray, ds, max_decoded_bytes)


def _checked(convert: Callable[[Dataset], T], ds: Dataset, max_decoded_bytes: int) -> T:
    """`convert(ds)` after the pixel contract, with any inconsistency in the pixel attributes
    (or the decoder's memory limit) as an InvalidInputError, never a crash."""
    try:
        check_pixel_contract(ds, max_decoded_bytes)
        return convert(ds)
    except InvalidInputError:
        raise
    except MemoryError as exc:  # a decoder under its memory limit (dicom/sandbox.py)
        raise InvalidInputError("decoding exceeded the decoder's memory limit",
                                Reason.UNDECODABLE_PIXELS) from exc
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            NotImplementedError, RuntimeError) as exc:
        raise InvalidInputError(f"pixel attributes are inconsistent: {type(exc).__name__}") from exc


def _modality(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT or rescale to a new float32 array (pydicom's rescale would make float64)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    values = raw.astype(np.float32)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        values *= float(ds.RescaleSlope)
        values += float(ds.RescaleIntercept)
    return values


def _dataset_to_gray(ds: Dataset) -> np.ndarray:
    raw = _first_frame(ds)
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _to_gray(raw, ds)
    if raw.ndim != 2:
        raise InvalidInputError(f"grayscale pixel array must be 2-D, got shape {raw.shape}")
    padding = raw == ds.PixelPaddingValue if "PixelPaddingValue" in ds else None
    values = _modality(raw, ds)
    del raw  # the caller's dataset still holds the encoded bytes; the decoded frame can go
    gray = _apply_voi(values, ds)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:
        np.subtract(1.0, gray, out=gray)
    if padding is not None:
        gray[padding] = 0.0
    return gray.astype(np.float32, copy=False)


# --- modality values, for a viewer that applies VOI and presentation itself -------------------

PADDING_CODE = 65535  # in uint16 modality values: a Pixel Padding Value pixel (not a value)
_INT32 = 2**31 - 1


def modality_values(ds: Dataset,
                    max_decoded_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, float, bool]:
    """The first frame after the Modality LUT (Rescale Slope/Intercept or the Modality LUT
    Sequence), before any VOI: grayscale images only (colour has no modality values).

    When every value is a whole number and they span at most 65535 (65534 when the image has
    Pixel Padding Value pixels), uint16 codes, value = code + offset, padding as PADDING_CODE:
    half the bytes of float32, exact. Otherwise float32 values (offset 0), padding as NaN.
    Returns (values, offset, whether any pixel is padding). The same checks and limits as
    `dataset_to_gray` run first."""
    return _checked(_modality_values, ds, max_decoded_bytes)


def _modality_values(ds: Dataset) -> tuple[np.ndarray, float, bool]:
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidInputError(f"{photometric} images have no modality values (grayscale only)",
                                Reason.UNSUPPORTED_PIXELS)
    raw = _first_frame(ds)
    if raw.ndim != 2:
        raise InvalidInputError(f"grayscale pixel array must be 2-D, got shape {raw.shape}")
    padding = raw == ds.PixelPaddingValue if "PixelPaddingValue" in ds else None
    if padding is not None and not padding.any():
        padding = None
    kept = raw[~padding] if padding is not None else raw
    if kept.size == 0:  # every pixel is padding: nothing to show but padding
        return np.full(raw.shape, PADDING_CODE, dtype=np.uint16), 0.0, True
    span_limit = PADDING_CODE - 1 if padding is not None else PADDING_CODE
    codes: np.ndarray | None = None
    offset = 0.0
    if ds.get("ModalityLUTSequence"):
        values = np.asarray(apply_modality_lut(raw, ds))
        if values.dtype.kind in "iu":  # LUT entries: whole numbers by definition
            shown = values[~padding] if padding is not None else values
            low, high = int(shown.min()), int(shown.max())
            if high - low <= span_limit:
                codes, offset = (values.astype(np.int64) - low).astype(np.uint16), float(low)
    elif raw.dtype.kind in "iu":
        rescaled = "RescaleSlope" in ds and "RescaleIntercept" in ds  # as _modality: both or neither
        slope = float(ds.RescaleSlope) if rescaled else 1.0
        intercept = float(ds.RescaleIntercept) if rescaled else 0.0
        if slope.is_integer() and intercept.is_integer():
            a, b = int(kept.min()) * int(slope), int(kept.max()) * int(slope)
            low, high = min(a, b) + int(intercept), max(a, b) + int(intercept)
            if high - low <= span_limit and max(abs(a), abs(b), abs(int(intercept) - low)) <= _INT32:
                work: np.ndarray[Any, np.dtype[np.signedinteger[Any]]] = raw.astype(
                    np.int32 if raw.itemsize < 4 else np.int64)
                np.multiply(work, int(slope), out=work)  # padding may wrap: overwritten below
                np.add(work, int(intercept) - low, out=work)
                codes, offset = work.astype(np.uint16), float(low)
    if codes is not None:
        if padding is not None:
            codes[padding] = PADDING_CODE
        return codes, offset, padding is not None
    values = _modality(raw, ds)
    if padding is not None:
        values[padding] = np.nan
    return np.ascontiguousarray(values, dtype=np.float32), 0.0, padding is not None
