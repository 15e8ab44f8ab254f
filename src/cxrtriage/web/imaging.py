"""Pictures for the browser, rendered on the server in their true geometry: each image keeps its
own aspect ratio, with Pixel Spacing (or Imager Pixel Spacing, or Pixel Aspect Ratio) making
rows and columns the same size in the patient, and the longer side brought down to a display
size. Pixels go through the grayscale pipeline of the model (modality LUT, VOI, MONOCHROME1
inversion: dicom/preprocess.dataset_to_gray), never the model's square.

A heat map lives in the model's square, which was made from the image's trimmed region
(dicom/geometry.trim_box) squashed to a square. `heat_overlay` undoes that: it stretches the map
back over the trimmed region of the displayed image and leaves the rest transparent, so the
overlay, the same size as the image, lies on the anatomy exactly.

Every pixel decode (stored images, stored heat maps, uploads to "try an image") runs in a child
process under a memory and a time limit (dicom/sandbox.py), never in the app: a hostile file
costs its own request only. `configure_decoding` sets the children's count and limits. Only the
spacing attributes of a stored header are read here (pydicom, `specific_tags`)."""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cxrtriage.dicom.geometry import MAX_FRACTIONAL_VALUE, TrimBox, display_size, pixel_aspect, trim_box
from cxrtriage.dicom.reading import read_upload_header
from cxrtriage.dicom.sandbox import DecodeLimits, DecoderPool, answer_or_raise
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError

logger = logging.getLogger(__name__)
DISPLAY_SIZE = 1024  # the longer side of a study image's preview; `None` (full) keeps every pixel
TRY_SIZE = 512  # the longer side of an uploaded image shown back by "try an image"
SPACING_TAGS = ["PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"]
_pool_lock = threading.Lock()
_pool: DecoderPool | None = None
_pool_config: tuple[int, DecodeLimits] | None = None


def configure_decoding(processes: int = 2, limits: DecodeLimits | None = None) -> None:
    """The app's decoder children (from CXRTRIAGE_DECODE_PROCESSES and the decode limits);
    started on first use. Until called, two children under the default limits. Called again
    with the same numbers, it keeps the running children."""
    global _pool, _pool_config
    config = (max(1, processes), limits or DecodeLimits())
    with _pool_lock:
        if _pool is not None and _pool_config == config:
            return
        if _pool is not None:
            _pool.shutdown()
        _pool, _pool_config = DecoderPool(*config), config


def decoder() -> DecoderPool:
    """The app's decoder children, started on first use (web/pixel_values.py asks them too)."""
    global _pool, _pool_config
    with _pool_lock:
        if _pool is None:
            _pool, _pool_config = DecoderPool(2), (2, DecodeLimits())
        return _pool


def _png(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@dataclass(frozen=True)
class View:
    """An image as shown: its PNG, its displayed size, and where the model's picture lies in it."""

    png: bytes
    height: int
    width: int
    box: TrimBox


def _eight_bit(gray: np.ndarray) -> np.ndarray:
    """[0, 1] to 0..255, rounded, computed in `gray` itself (consumed): a 3000 x 2500 image would
    otherwise take three more float copies of 30 MB each."""
    np.clip(gray, 0.0, 1.0, out=gray)
    gray *= 255
    np.rint(gray, out=gray)
    return gray.astype(np.uint8)


def gray_view(gray: np.ndarray, aspect: float, longest: int | None) -> View:
    """A [0, 1] grayscale image (consumed) at its true proportions, the longer side at most
    `longest`."""
    height, width = display_size(gray.shape[0], gray.shape[1], aspect=aspect, longest=longest)
    box = trim_box(gray)
    picture = Image.fromarray(_eight_bit(gray))
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return View(_png(np.asarray(picture)), height, width, box)


def stored_aspect(path: str) -> float:
    """Pixel height over width from a stored file's spacing attributes (1.0 when it has none)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=SPACING_TAGS, force=True)
        return pixel_aspect(header)
    except Exception:  # pydicom raises many types on a corrupt header: square pixels, then
        logger.info("pixel spacing unreadable; pixels shown square")
        return 1.0


@lru_cache(maxsize=32)
def _stored_view(path: str, _mtime: float, sha256: str, longest: int | None) -> View:
    gray = answer_or_raise(decoder().decode(path, sha256))
    return gray_view(gray, stored_aspect(path), longest)


def existing_file(path: str, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"the stored {what} file is missing", Reason.UNREADABLE_FILE)
    return file


def stored_view(path: str, sha256: str = "", longest: int | None = DISPLAY_SIZE) -> View:
    """A stored image in true geometry; `sha256` (when given) must still be the file's digest."""
    file = existing_file(path, "image")
    return _stored_view(str(file), file.stat().st_mtime, sha256, longest)


def render_instance(path: str, size: int | None = DISPLAY_SIZE, sha256: str = "") -> bytes:
    """A stored image as PNG in true geometry, the longer side at most `size` (None: every pixel)."""
    return stored_view(path, sha256, size).png


def cam_from_overlay(rgb: np.ndarray) -> np.ndarray:
    """Recover the [0, 1] heat map from the worker's blended overlay, which keeps
    red = g(1 - c/2) + 255 c/2 and green = g(1 - c/2); so red - green = 255 c / 2."""
    diff = rgb[..., 0].astype(np.float32) - rgb[..., 1].astype(np.float32)
    return np.clip(diff / 127.5, 0.0, 1.0)


def heat_overlay(cam: np.ndarray, box: TrimBox, height: int, width: int) -> bytes:
    """A transparent PNG of `height` x `width`: the map (the model's square) stretched over the
    box's place in the displayed image, in a warm colour scale, transparent where it is cold and
    everywhere outside the box."""
    import matplotlib

    top, bottom, left, right = box.scaled(height, width)
    stretched = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32))  # mode "F"
    stretched = stretched.resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    region = np.clip(np.asarray(stretched), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](region)  # [h, w, 4] floats
    colours[..., 3] = np.clip((region - 0.15) / 0.85, 0.0, 1.0) * 0.6
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    canvas[top:bottom, left:right] = (colours * 255).round().astype(np.uint8)
    return _png(canvas)


@lru_cache(maxsize=32)
def _stored_heat(heatmap: str, _heat_mtime: float, image: str, _mtime: float, sha256: str,
                 longest: int | None) -> bytes:
    view = _stored_view(image, _mtime, sha256, longest)
    rgb = answer_or_raise(decoder().decode(heatmap, mode="rgb8"))  # the child checks it is 8-bit RGB
    return heat_overlay(cam_from_overlay(rgb), view.box, view.height, view.width)


@lru_cache(maxsize=32)
def _stored_map(heatmap: str, _heat_mtime: float, image: str, _mtime: float, sha256: str,
                longest: int | None) -> bytes:
    view = _stored_view(image, _mtime, sha256, longest)
    decoded = answer_or_raise(decoder().decode_values(heatmap))
    # The fractional values (0..MAX_FRACTIONAL_VALUE) on the image's own grid, as the worker wrote
    # them: the whole image is the box, nothing is read back from colours.
    cam = (decoded.values.astype(np.float32) + decoded.offset) / MAX_FRACTIONAL_VALUE
    rows, columns = cam.shape
    return heat_overlay(cam, TrimBox(rows, columns, 0, rows, 0, columns), view.height, view.width)


def render_heatmap(heatmap_path: str | None, image_path: str, sha256: str = "",
                   size: int | None = DISPLAY_SIZE, map_path: str | None = None) -> bytes:
    """The worker's stored heat map as a transparent PNG in register with `render_instance` of
    the same image and size: from the map as data (`map_path`, the fractional Segmentation on the
    image's grid) when the worker wrote one, else from the Secondary Capture of the overlay in
    the model's square."""
    image = existing_file(image_path, "image")
    if map_path is not None:
        heat = existing_file(map_path, "heatmap")
        return _stored_map(str(heat), heat.stat().st_mtime, str(image), image.stat().st_mtime, sha256, size)
    if heatmap_path is None:
        raise InvalidInputError("no stored heat map", Reason.UNREADABLE_FILE)
    heat = existing_file(heatmap_path, "heatmap")
    return _stored_heat(str(heat), heat.stat().st_mtime, str(image), image.stat().st_mtime, sha256, size)


def is_dicom(data: bytes, filename: str) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom"))


def upload_view(data: bytes, dicom: bool, longest: int = TRY_SIZE) -> View:
    """An uploaded file (DICOM, or a PNG or JPEG picture) shown back in true geometry; raises
    InvalidInputError with the file's reason when it cannot be shown (nor classified)."""
    pool = decoder()
    if dicom:
        header = read_upload_header(data, pool.limits.max_decoded_bytes)  # spacing only; bounded
        return gray_view(answer_or_raise(pool.submit_data(data).result()), pixel_aspect(header), longest)
    return gray_view(answer_or_raise(pool.submit_data(data, mode="picture").result()), 1.0, longest)


def trial_overlay(cam_png: bytes, box: dict[str, int], aspect: float, longest: int = TRY_SIZE) -> bytes:
    """The heat map a worker stored for "try an image", in register with `upload_view`."""
    with Image.open(BytesIO(cam_png)) as stored:  # our worker's own 8-bit PNG of the model's square
        cam = np.asarray(stored.convert("L"), dtype=np.float32) / 255.0
    trim = TrimBox(**box)
    height, width = display_size(trim.rows, trim.columns, aspect=aspect, longest=longest)
    return heat_overlay(cam, trim, height, width)
