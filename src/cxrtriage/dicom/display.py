"""What a viewer needs, besides the modality values (preprocess.modality_values), to show a
grayscale image the way the DICOM grayscale pipeline does (PS3.3 C.11): the file's VOI windows
(every Window Center/Width pair, its explanation and the VOI LUT Function), its VOI LUTs (as
tables), the presentation (MONOCHROME1, or an INVERSE Presentation LUT Shape: inverted), the
stored range (the window when the file names none), the spacing and what the modality values
are (Modality, Rescale Type).

`display_attributes` runs in the decoder child, on a file it has parsed; `checked_display` runs in
the parent, which treats the child's answer as data: anything but the shapes and bounds below is
a broken child, not a value to pass on. Text from the file (explanations) is cut to MAX_TEXT
printable characters; it reaches only the page of the signed-in user viewing that image, never a
log."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

MAX_WINDOWS = 16
MAX_VOI_LUTS = 4
MAX_LUT_ENTRIES = 65536
MAX_TEXT = 64
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio")
_KEYS = {"photometric", "inverted", "modality", "rescale_type", "windows", "voi_function", "voi_luts",
         "stored_range", "default", "spacing"}


def _text(value: Any) -> str:
    text = "".join(c for c in str(value if value is not None else "") if c.isprintable())
    return text.strip()[:MAX_TEXT]


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _windows(ds: Dataset) -> list[dict[str, Any]]:
    """Every (center, width) pair, with its explanation when the file gives one."""
    centers, widths = _values(ds.get("WindowCenter")), _values(ds.get("WindowWidth"))
    explanations = _values(ds.get("WindowCenterWidthExplanation"))
    windows = []
    for index, (center, width) in enumerate(zip(centers, widths, strict=False)):
        c, w = _finite(center), _finite(width)
        if c is None or w is None or w <= 0:
            continue
        text = _text(explanations[index]) if index < len(explanations) else ""
        windows.append({"center": c, "width": w, "explanation": text})
        if len(windows) == MAX_WINDOWS:
            break
    return windows


def _lut_table(ds: Dataset, item: Dataset) -> tuple[dict[str, Any], np.ndarray] | None:
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        return None
    data = item.get("LUTData")
    if isinstance(data, bytes | bytearray):  # OW: 16-bit words in the data set's byte order
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        table = np.frombuffer(bytes(data[: 2 * MAX_LUT_ENTRIES]), dtype="<u2" if little else ">u2")
    else:
        table = np.asarray(_values(data)[:MAX_LUT_ENTRIES], dtype=np.float64)
    table = table[: (entries or MAX_LUT_ENTRIES)].astype(np.float32)
    if table.size == 0 or not np.isfinite(table).all() or not 1 <= bits <= 16:
        return None
    return {"first_mapped": first, "bits": bits, "explanation": _text(item.get("LUTExplanation"))}, table


def _stored_range(ds: Dataset) -> list[float]:
    """The modality values of the stored bit range: the pipeline's window when the file has none."""
    from pydicom.pixels import apply_modality_lut

    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.float64)
    else:
        ends = np.array([0, 2**bits - 1], dtype=np.float64)
    mapped = np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)
    return [float(mapped.min()), float(mapped.max())]


def display_attributes(ds: Dataset) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The display attributes as JSON-able data, and the VOI LUT tables (float32) in the order of
    its `voi_luts`. `default` is what dicom/preprocess.dataset_to_gray (the server's preview)
    applies: the first VOI LUT, else the first window, else the stored range."""
    luts: list[tuple[dict[str, Any], np.ndarray]] = []
    for item in list(ds.get("VOILUTSequence") or [])[:MAX_VOI_LUTS]:
        found = _lut_table(ds, item)
        if found is not None:
            luts.append(found)
    windows = _windows(ds)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    default = ({"kind": "voi_lut", "index": 0} if luts else {"kind": "window", "index": 0} if windows
               else {"kind": "range"})
    spacing = {}
    for keyword in SPACING_KEYWORDS:
        pair = [_finite(v) for v in _values(ds.get(keyword))][:2]
        if len(pair) == 2 and None not in pair:
            spacing[keyword] = pair
    photometric = str(ds.get("PhotometricInterpretation", ""))
    rescale_type = ds.get("RescaleType") or (ds.ModalityLUTSequence[0].get("ModalityLUTType")
                                             if ds.get("ModalityLUTSequence") else "")
    display = {
        "photometric": photometric,
        "inverted": photometric == "MONOCHROME1"
        or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE",
        "modality": _text(ds.get("Modality", "")), "rescale_type": _text(rescale_type),
        "windows": windows, "voi_function": function if function in VOI_FUNCTIONS else "LINEAR",
        "voi_luts": [meta for meta, _ in luts], "stored_range": _stored_range(ds), "default": default,
        "spacing": spacing,
    }
    return display, [table for _, table in luts]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError("not a short string")
    return value


def checked_display(value: Any, lut_lengths: Any) -> tuple[dict[str, Any], list[int]]:
    """The child's display attributes and VOI LUT lengths, rebuilt from known keys only; raises
    ValueError for anything `display_attributes` could not have written."""
    try:
        return _checked(value, lut_lengths)
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError("display attributes of the wrong shape") from exc


def _checked(value: Any, lut_lengths: Any) -> tuple[dict[str, Any], list[int]]:
    if not isinstance(value, dict) or set(value) != _KEYS or not isinstance(lut_lengths, list):
        raise ValueError("display attributes of the wrong shape")
    windows, luts = value["windows"], value["voi_luts"]
    if not isinstance(windows, list) or len(windows) > MAX_WINDOWS:
        raise ValueError("windows")
    if not isinstance(luts, list) or len(luts) > MAX_VOI_LUTS or len(luts) != len(lut_lengths):
        raise ValueError("VOI LUTs")
    lengths = []
    for length in lut_lengths:
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_LUT_ENTRIES:
            raise ValueError("VOI LUT length")
        lengths.append(length)
    stored, spacing, default = value["stored_range"], value["spacing"], value["default"]
    if not isinstance(stored, list) or len(stored) != 2 or not isinstance(spacing, dict):
        raise ValueError("stored range or spacing")
    if set(spacing) - set(SPACING_KEYWORDS) or any(len(spacing[k]) != 2 for k in spacing):
        raise ValueError("spacing")
    if not isinstance(default, dict) or default.get("kind") not in ("voi_lut", "window", "range"):
        raise ValueError("default")
    checked = {
        "photometric": _string(value["photometric"]), "inverted": value["inverted"] is True,
        "modality": _string(value["modality"]), "rescale_type": _string(value["rescale_type"]),
        "windows": [{"center": _number(w["center"]), "width": _number(w["width"]),
                     "explanation": _string(w["explanation"])} for w in windows],
        "voi_function": value["voi_function"] if value["voi_function"] in VOI_FUNCTIONS else "LINEAR",
        "voi_luts": [{"first_mapped": int(_number(v["first_mapped"])), "bits": int(_number(v["bits"])),
                      "explanation": _string(v["explanation"])} for v in luts],
        "stored_range": [_number(stored[0]), _number(stored[1])],
        "default": {"kind": default["kind"], "index": 0} if default["kind"] != "range" else {"kind": "range"},
        "spacing": {k: [_number(spacing[k][0]), _number(spacing[k][1])]
                    for k in SPACING_KEYWORDS if k in spacing},
    }
    return checked, lengths
