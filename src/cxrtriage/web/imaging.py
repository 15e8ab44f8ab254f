"""Pictures for the browser, rendered on the server with the model's own grayscale pipeline
(modality LUT, VOI, MONOCHROME1 inversion) and square framing, so the heat map, computed on
that frame, lines up with the image exactly.

Every pixel decode (stored images, stored heat maps, uploads to "try an image") runs in a child
process under a memory and a time limit (dicom/sandbox.py), never in the app: a hostile file
costs its own request only. `configure_decoding` sets the children's count and limits."""

from __future__ import annotations

import base64
import logging
import threading
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrtriage.dicom.reading import read_upload_header
from cxrtriage.dicom.sandbox import DecodeLimits, DecoderPool
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.model_input import fit_to_square

logger = logging.getLogger(__name__)
DISPLAY_SIZE = 1024
_pool_lock = threading.Lock()
_pool: DecoderPool | None = None


def configure_decoding(processes: int = 2, limits: DecodeLimits | None = None) -> None:
    """The app's decoder children (from CXRTRIAGE_DECODE_PROCESSES and the decode limits);
    started on first use. Until called, two children under the default limits."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()
        _pool = DecoderPool(processes, limits)


def _decoder() -> DecoderPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = DecoderPool(2)
        return _pool


def _image(decoded: tuple[np.ndarray | None, str, str]) -> np.ndarray:
    """The decoded pixels, or the file's own reason as an InvalidInputError."""
    pixels, reason, message = decoded
    if pixels is None:
        raise InvalidInputError(message or "pixel data cannot be decoded", Reason(reason))
    return pixels


def decode_gray(path: str) -> np.ndarray:
    """A stored image through the grayscale pipeline, decoded in a child."""
    return _image(_decoder().decode(path))


def _png(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def gray_png(gray: np.ndarray) -> bytes:
    return _png((np.clip(gray, 0.0, 1.0) * 255).round().astype(np.uint8))


@lru_cache(maxsize=32)
def _render(path: str, _mtime: float, size: int) -> bytes:
    return gray_png(fit_to_square(decode_gray(path), size))


def render_instance(path: str, size: int = DISPLAY_SIZE) -> bytes:
    """A stored image as PNG, framed as the model sees it (longer side `size`, padded square)."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError("the stored image file is missing")
    return _render(str(file), file.stat().st_mtime, size)


def cam_from_overlay(rgb: np.ndarray) -> np.ndarray:
    """Recover the [0, 1] heat map from the worker's blended overlay, which keeps
    red = g(1 - c/2) + 255 c/2 and green = g(1 - c/2); so red - green = 255 c / 2."""
    diff = rgb[..., 0].astype(np.float32) - rgb[..., 1].astype(np.float32)
    return np.clip(diff / 127.5, 0.0, 1.0)


def heat_rgba(cam: np.ndarray, size: int = DISPLAY_SIZE) -> bytes:
    """A transparent PNG: the map in a warm colour scale, transparent where it is cold."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](cam)  # [H, W, 4] floats
    colours[..., 3] = np.clip((cam - 0.15) / 0.85, 0.0, 1.0) * 0.6
    image = Image.fromarray((colours * 255).round().astype(np.uint8), mode="RGBA")
    return _png(np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)))


@lru_cache(maxsize=32)
def _heat_from_file(path: str, _mtime: float, size: int) -> bytes:
    rgb = _image(_decoder().decode(path, mode="rgb8"))  # the child checks it is 8-bit RGB
    return heat_rgba(cam_from_overlay(rgb), size)


def render_heatmap(path: str, size: int = DISPLAY_SIZE) -> bytes:
    """The stored heat map Secondary Capture as a transparent overlay PNG."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError("the stored heatmap file is missing")
    return _heat_from_file(str(file), file.stat().st_mtime, size)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class TryImage:
    """Classify an uploaded file in memory: nothing is written to disk or the database."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self._classifier: Any = None
        self._sha: str | None = None
        self._lock = threading.Lock()

    def classifier(self) -> Any:
        with self._lock:
            if self._classifier is None:
                from cxrtriage.models.inference import Classifier

                self._classifier = Classifier(self.package)
            return self._classifier

    @property
    def weights_sha256(self) -> str:
        """The weights this app can compute heat maps with (from the manifest, no loading)."""
        if self._sha is None:
            try:
                from cxrtriage.models.manifest import read_manifest

                self._sha = read_manifest(self.package).weights_sha256
            except Exception:  # no usable package: maps are then only those the worker stored
                self._sha = ""
        return self._sha

    def heatmap(self, path: str, size: int = DISPLAY_SIZE) -> bytes:
        """The heat map of a stored image, computed now (when the worker stored none)."""
        file = Path(path)
        if not file.is_file():
            raise InvalidInputError("the stored image file is missing")
        return self._heatmap(str(file), file.stat().st_mtime, size)

    @lru_cache(maxsize=16)  # noqa: B019 - one TryImage per app, kept for the app's life
    def _heatmap(self, path: str, _mtime: float, size: int) -> bytes:
        classifier = self.classifier()
        image = fit_to_square(decode_gray(path), classifier.manifest.input_size)
        with self._lock:
            _, cams = classifier.predict_with_heatmaps([""], image[np.newaxis])
        return heat_rgba(cams[0], size)

    def run(self, data: bytes, filename: str) -> dict[str, Any]:
        from cxrtriage.models.examine import gate, note

        classifier = self.classifier()
        remark = ""
        if len(data) > 132 and data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom")):
            ds = read_upload_header(data, _decoder().limits.max_decoded_bytes)  # for the gate
            remark = note(gate(ds, classifier.manifest))  # the worker's gate, age warning included
            gray = _image(_decoder().submit_data(data).result())
        else:
            gray = _image(_decoder().submit_data(data, mode="picture").result())
        with self._lock:  # one inference at a time: the model is shared
            image = fit_to_square(gray, classifier.manifest.input_size)
            preds, cams = classifier.predict_with_heatmaps(["upload"], image[np.newaxis])
        pred, cam = preds[0], cams[0]
        m = classifier.manifest
        return {"model_name": m.name, "model_version": m.version, "flag_label": pred.flag_label,
                "threshold": pred.threshold, "flagged": pred.flagged,
                "probability": pred.probabilities[pred.flag_label],
                "probabilities": pred.probabilities, "note": remark,
                "image": data_uri(gray_png(fit_to_square(gray, 512))),
                "heatmap": data_uri(heat_rgba(cam, 512))}
