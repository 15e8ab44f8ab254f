"""The study page's viewer windows the stored values itself, as a PACS viewer does: this module
serves an image's modality values (after Rescale Slope/Intercept or the Modality LUT, before any
VOI) and what the viewer needs to show them (`display_data`): rows and columns, the pixel aspect
from the spacing, the photometric interpretation, every window the file names (with its
explanation), its VOI LUTs as tables, the value range, and our presets.

The values travel as one binary body, row by row, little-endian: uint16 codes (value = code +
offset; `padding_code` marks Pixel Padding Value pixels) when the values are whole numbers within
65535 of each other (every DX/CR/CT image we have seen), else float32 (NaN for padding). Not
compressed: zlib at its fastest takes ~0.35 s for a 3000 x 2500 image here and saves ~30 %,
longer than sending the difference over a hospital LAN.

The decode runs in a decoder child (dicom/sandbox.py, mode "modality") under the same limits as
every decode. One decode serves the metadata request and the pixel request of the same image: the
answer is kept until both have been served (at most CACHE_SECONDS, and within CACHE_BYTES), and
a request for an image being decoded waits for that decode.

Presets. The file's own windows and VOI LUTs come first, as the file names them. "Lung" and
"Mediastinum" then mean different things by the kind of values:
- HU-like values (CT, or Rescale Type HU): the standard windows, lung W 1500 L -600 and
  mediastinum W 350 L 50.
- Projection radiographs (DX, CR, ...): their values are not calibrated to tissue (detector
  exposure after the vendor's processing, usually logarithmic), so no fixed window means "lung".
  Our presets are contrast settings relative to this image: between its 1st and 99th percentile
  values (padding excluded), "Lung" spreads the darker 60 % of the displayed brightness range
  over the whole gray scale (lung fields gain contrast; the mediastinum goes white) and
  "Mediastinum" the brighter 60 % (the mediastinum and the spine behind the heart gain
  contrast; the lungs go black). The same preset on two images does not mean the same tissue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrtriage.dicom.geometry import pixel_aspect
from cxrtriage.dicom.preprocess import PADDING_CODE
from cxrtriage.dicom.sandbox import ModalityImage, answer_or_raise
from cxrtriage.web.imaging import decoder, existing_file

logger = logging.getLogger(__name__)
CACHE_BYTES = 32 * 1024 * 1024
CACHE_SECONDS = 60.0
SAMPLE_PIXELS = 1 << 20  # percentiles from at most this many pixels (a regular subsample)
LUNG_HU = (-600.0, 1500.0)  # (level, width)
MEDIASTINUM_HU = (50.0, 350.0)
RELATIVE = {"lung": (0.0, 0.6), "mediastinum": (0.4, 1.0)}  # brightness fractions of p01..p99


@dataclass(frozen=True)
class PixelValues:
    """One image's modality values as the viewer gets them, and what it needs to show them."""

    body: memoryview  # little-endian uint16 codes or float32 values, row by row
    dtype: str  # "uint16" or "float32"
    offset: float
    padding_code: int | None  # the uint16 code of padding pixels, when any (float32: NaN)
    rows: int
    columns: int
    aspect: float  # a pixel's height over its width in the patient
    display: dict[str, Any]  # dicom/display.checked_display
    luts: list[list[float]]
    value_range: dict[str, float]  # min, max, p01, p99 of the values (padding excluded)

    @property
    def nbytes(self) -> int:
        return self.body.nbytes


def _value_range(image: ModalityImage) -> dict[str, float]:
    values = image.values
    step = max(1, int(np.sqrt(values.size / SAMPLE_PIXELS)))
    sample = values[::step, ::step].ravel()
    if values.dtype == np.uint16:
        counts = np.bincount(sample, minlength=65536)
        if image.padded:
            counts[PADDING_CODE] = 0
        seen = np.nonzero(counts)[0]
        if seen.size == 0:
            return {"min": image.offset, "max": image.offset, "p01": image.offset, "p99": image.offset}
        cumulative = np.cumsum(counts)
        low, high = np.searchsorted(cumulative, [0.01 * cumulative[-1], 0.99 * cumulative[-1]])
        kept = values if not image.padded else values[values != PADDING_CODE]
        ends = (float(kept.min()), float(kept.max()))
        return {"min": ends[0] + image.offset, "max": ends[1] + image.offset,
                "p01": float(low) + image.offset, "p99": float(high) + image.offset}
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return {"min": 0.0, "max": 0.0, "p01": 0.0, "p99": 0.0}
    p01, p99 = np.percentile(finite, [1, 99])
    return {"min": float(np.nanmin(values)), "max": float(np.nanmax(values)), "p01": float(p01),
            "p99": float(p99)}


def _values(path: str, sha256: str) -> PixelValues:
    image = answer_or_raise(decoder().decode_values(path, sha256))
    values = image.values.astype(image.values.dtype.newbyteorder("<"), copy=False)
    rows, columns = (int(n) for n in values.shape)
    body = memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    return PixelValues(
        body, values.dtype.name, image.offset,
        PADDING_CODE if image.padded and values.dtype == np.uint16 else None, rows, columns,
        pixel_aspect(image.display["spacing"]), image.display,
        [table.astype(float).tolist() for table in image.luts], _value_range(image))


PARTS = frozenset({"display", "pixels"})  # an image's two requests: its metadata and its values
Key = tuple[str, float, str]


@dataclass
class _Entry:
    at: float
    values: PixelValues
    served: set[str]


class _Cache:
    """One decode serves an image's two requests (`PARTS`), whether they come at once (the
    second waits for the first's decode) or one after the other: the answer is kept until both
    have been served, for at most CACHE_SECONDS, and within CACHE_BYTES (the newest always)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[Key, _Entry] = OrderedDict()
        self._running: dict[Key, Future[PixelValues]] = {}

    def get(self, path: str, mtime: float, sha256: str, part: str) -> PixelValues:
        key = (path, mtime, sha256)
        with self._lock:
            self._expire(time.monotonic())
            entry = self._done.get(key)
            if entry is not None:
                self._serve(key, entry, part)
                return entry.values
            running = self._running.get(key)
            mine = running is None
            if running is None:
                running = self._running[key] = Future()
        if not mine:
            values = running.result()
            with self._lock:
                entry = self._done.get(key)
                if entry is not None:
                    self._serve(key, entry, part)
            return values
        try:
            values = _values(path, sha256)
        except BaseException as exc:
            with self._lock:
                self._running.pop(key, None)
            running.set_exception(exc)
            raise
        with self._lock:
            self._running.pop(key, None)
            self._done[key] = entry = _Entry(time.monotonic(), values, set())
            self._serve(key, entry, part)
            self._expire(time.monotonic())
        running.set_result(values)
        return values

    def _serve(self, key: Key, entry: _Entry, part: str) -> None:
        entry.served.add(part)
        if entry.served >= PARTS:
            self._done.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._done and (now - next(iter(self._done.values())).at > CACHE_SECONDS
                              or (len(self._done) > 1
                                  and sum(e.values.nbytes for e in self._done.values()) > CACHE_BYTES)):
            self._done.popitem(last=False)

    def holds(self, path: str) -> bool:
        """Whether a decoded answer for the file at `path` is being kept."""
        with self._lock:
            return any(key[0] == path for key in self._done)


_cache = _Cache()


def stored_values(path: str, sha256: str = "", part: str = "pixels") -> PixelValues:
    """A stored image's modality values, for one of its two requests (`part`: "display" or
    "pixels"); `sha256` (when given) must still be the file's digest."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
    file = existing_file(path, "image")
    return _cache.get(str(file), file.stat().st_mtime, sha256, part)


def hu_like(display: dict[str, Any]) -> bool:
    return display["modality"] == "CT" or display["rescale_type"].upper() == "HU"


def units(display: dict[str, Any]) -> str:
    """HU, or the Rescale Type the file names; empty for US (unspecified) or none."""
    if hu_like(display):
        return "HU"
    return "" if display["rescale_type"].upper() in ("", "US") else display["rescale_type"]


def _window(key: str, name: str, center: float, width: float, function: str, source: str) -> dict[str, Any]:
    return {"id": key, "name": name, "kind": "window", "center": round(center, 3),
            "width": round(max(width, 1e-3), 3), "function": function, "source": source}


def presets(values: PixelValues) -> tuple[list[dict[str, Any]], str]:
    """The viewer's presets in menu order, and the id of the one the server's preview shows
    (dicom/preprocess.dataset_to_gray: the first VOI LUT, else the first window, else the stored
    range)."""
    display, value_range = values.display, values.value_range
    function = display["voi_function"]
    found = [_window(f"file-{i}", w["explanation"] or f"File window {i + 1}", w["center"], w["width"],
                     function, "file") for i, w in enumerate(display["windows"])]
    found += [{"id": f"lut-{i}", "name": lut["explanation"] or f"VOI LUT {i + 1}", "kind": "voi_lut",
               "index": i, "source": "file"} for i, lut in enumerate(display["voi_luts"])]
    if hu_like(display):
        found.append(_window("lung", "Lung (W 1500 L -600)", *LUNG_HU, "LINEAR", "HU"))
        found.append(_window("mediastinum", "Mediastinum (W 350 L 50)", *MEDIASTINUM_HU, "LINEAR", "HU"))
    else:
        low, high = value_range["p01"], value_range["p99"]
        span = max(high - low, 1e-3)
        for key, name in (("lung", "Lung (relative)"), ("mediastinum", "Mediastinum (relative)")):
            start, end = RELATIVE[key]
            middle = (start + end) / 2
            center = high - middle * span if display["inverted"] else low + middle * span
            found.append(_window(key, name, center, (end - start) * span, "LINEAR_EXACT", "relative"))
    low, high = value_range["min"], value_range["max"]
    found.append(_window("full", "Full range of the image", (low + high) / 2, high - low, "LINEAR_EXACT",
                         "image"))
    low, high = display["stored_range"]
    found.append(_window("stored", "Stored range", (low + high) / 2, high - low, "LINEAR_EXACT", "file"))
    default = display["default"]
    chosen = {"voi_lut": "lut-0", "window": "file-0"}.get(default["kind"], "stored")
    return found, chosen


def display_data(values: PixelValues, study_uid: str, sop_uid: str, pixels_url: str) -> dict[str, Any]:
    """The viewer's metadata of one image: the JSON twin of its pixel body."""
    display = values.display
    preset_list, default = presets(values)
    hu = hu_like(display)
    return {
        "study_uid": study_uid, "sop_instance_uid": sop_uid, "rows": values.rows, "columns": values.columns,
        "aspect": values.aspect, "spacing": display["spacing"],
        "photometric": display["photometric"], "inverted": display["inverted"],
        "modality": display["modality"], "rescale_type": display["rescale_type"], "hu_like": hu,
        "units": units(display),
        "pixels": {"url": pixels_url, "dtype": values.dtype, "byte_order": "little", "offset": values.offset,
                   "padding_code": values.padding_code, "bytes": values.nbytes},
        "value_range": values.value_range, "stored_range": display["stored_range"],
        "voi_function": display["voi_function"], "windows": display["windows"],
        "voi_luts": [{**lut, "table": table} for lut, table in zip(display["voi_luts"], values.luts,
                                                                    strict=True)],
        "presets": preset_list, "default_preset": default,
        "presets_note": ("Lung and mediastinum are the standard CT windows (Hounsfield units)." if hu else
                         "Values of a projection radiograph are not calibrated to tissue: lung and "
                         "mediastinum are contrast settings relative to this image's own 1st to 99th "
                         "percentile values, not tissue windows."),
    }
