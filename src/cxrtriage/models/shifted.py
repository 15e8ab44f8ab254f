"""The shifted validation: held-out patients re-acquired as DICOM and read back by the serving path.

Each validation picture is turned into a few DICOM radiographs as a hospital might send them: a
detector response curve (linear, power or log), part of the stored range used (intensity and
contrast shift), 8, 12 or 16 bits, a window or none, MONOCHROME1 or 2, a non-square detector
(aspect 0.82 or 1.22, which the serving code squashes back to the square; preprocessing version 1
padded it), resampling to the detector's size (up or down), and an encoding (uncompressed, RLE,
JPEG 2000 lossless or lossy, JPEG baseline). Each file is written to disk and read back with
`examine.examine_file`, the step the worker runs, so what is scored is exactly what the model
would see in production.

Recipes are drawn from a seeded generator per (image, variant), so the set is the same on every
machine; the model inputs are cached, keyed by everything they depend on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless
from tqdm import tqdm

from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.data import Sample
from cxrtriage.models.examine import examine_file
from cxrtriage.models.manifest import Manifest
from cxrtriage.models.model_input import PREPROCESSING_VERSION, image_file_to_gray

logger = logging.getLogger(__name__)

SHIFT_VERSION = "1"
RESPONSES = ("linear", "gamma", "log")
WINDOWS = ("none", "fit", "clip")
BITS = (8, 12, 16)
ASPECTS = (1.0, 0.82, 1.22)
DETECTORS = (160, 224, 512, 1024)
ENCODINGS = ("explicit", "rle", "j2k-lossless", "j2k-lossy", "jpeg-baseline")
LOSSLESS = ("explicit", "rle", "j2k-lossless")


@dataclass(frozen=True)
class Acquisition:
    """One simulated acquisition and encoding of a picture."""

    response: str = "linear"  # detector response curve applied to the displayed picture
    response_param: float = 1.0  # the power for "gamma", the strength a of log1p(a x) for "log"
    range_use: float = 1.0  # fraction of the stored range the picture spans
    offset: float = 0.0  # where in the stored range it starts (fraction)
    bits: int = 8
    window: str = "fit"  # "none": full stored range; "fit": the picture's range; "clip": 1-99th pct
    monochrome1: bool = False
    aspect: float = 1.0  # width / height of the detector image
    detector: int = 224  # longer side in pixels
    encoding: str = "explicit"

    def __post_init__(self) -> None:
        if self.response not in RESPONSES:
            raise ValueError(f"response must be one of {RESPONSES}, got {self.response!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.encoding == "jpeg-baseline" and self.bits != 8:
            raise ValueError("encoding 'jpeg-baseline' needs bits = 8")
        if not (0.0 < self.range_use <= 1.0 and 0.0 <= self.offset <= 1.0 - self.range_use + 1e-9):
            raise ValueError(f"range_use {self.range_use} and offset {self.offset} must fit in [0, 1]")


def draw_acquisition(rng: np.random.Generator) -> Acquisition:
    """A random recipe; every factor is drawn independently of the others."""
    response = RESPONSES[int(rng.integers(len(RESPONSES)))]
    param = {"linear": 1.0, "gamma": float(np.exp(rng.uniform(-0.4, 0.4))),
             "log": float(rng.uniform(1.5, 8.0))}[response]
    range_use = float(rng.uniform(0.5, 1.0)) if rng.random() < 0.6 else 1.0
    offset = float(rng.uniform(0.0, 1.0 - range_use))
    encoding = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
    bits = 8 if encoding == "jpeg-baseline" else BITS[int(rng.integers(len(BITS)))]
    return Acquisition(response=response, response_param=round(param, 4), range_use=round(range_use, 4),
                       offset=round(offset, 4), bits=bits,
                       window=WINDOWS[int(rng.integers(len(WINDOWS)))],
                       monochrome1=bool(rng.random() < 0.3),
                       aspect=ASPECTS[int(rng.integers(len(ASPECTS)))],
                       detector=DETECTORS[int(rng.integers(len(DETECTORS)))], encoding=encoding)


def _resize(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].clamp(0.0, 1.0).numpy()


def _respond(gray: np.ndarray, acq: Acquisition) -> np.ndarray:
    if acq.response == "gamma":
        return np.power(gray, acq.response_param)
    if acq.response == "log":
        return np.log1p(acq.response_param * gray) / np.log1p(acq.response_param)
    return gray


def render(gray: np.ndarray, acq: Acquisition) -> Dataset:
    """A DICOM radiograph of `gray` ([0, 1], bright = dense) acquired as `acq`."""
    if gray.ndim != 2:
        raise ValueError(f"gray must be a 2-D picture, got shape {gray.shape}")
    if acq.aspect < 1.0:
        height, width = acq.detector, max(1, round(acq.detector * acq.aspect))
    else:
        height, width = max(1, round(acq.detector / acq.aspect)), acq.detector
    signal = acq.offset + acq.range_use * _respond(_resize(gray, height, width), acq)
    top = 2**acq.bits - 1
    values = np.clip(np.rint(signal * top), 0, top)
    stored = values.astype(np.uint8 if acq.bits == 8 else np.uint16)
    ds = wrap_image(stored, monochrome1=acq.monochrome1, bits_stored=acq.bits,
                    PatientAge="003Y")
    if acq.window != "none":
        # The window is on stored values (before MONOCHROME1 inversion), as PS3.3 C.11.2 says.
        as_stored = (top - values) if acq.monochrome1 else values
        low, high = ((as_stored.min(), as_stored.max()) if acq.window == "fit"
                     else np.percentile(as_stored, [1.0, 99.0]))
        ds.WindowCenter = f"{(low + high) / 2.0:.2f}"
        ds.WindowWidth = f"{max(high - low, 2.0):.2f}"
    _encode(ds, acq)
    return ds


def _encode(ds: Dataset, acq: Acquisition) -> None:
    if acq.encoding == "rle":
        ds.compress(RLELossless)
    elif acq.encoding == "j2k-lossless":
        ds.compress(JPEG2000Lossless)
    elif acq.encoding == "j2k-lossy":
        ds.compress(JPEG2000, j2k_cr=[20])
    elif acq.encoding == "jpeg-baseline":
        pixels = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=85)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"


def plan(samples: list[Sample], variants: int, seed: int) -> list[tuple[int, Acquisition]]:
    """(sample index, recipe) pairs; each image's recipes depend only on the seed and its name."""
    rows = []
    for index, sample in enumerate(samples):
        name_key = int(hashlib.sha1(Path(sample.path).name.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, name_key])
        rows += [(index, draw_acquisition(rng)) for _ in range(variants)]
    return rows


def serve(ds: Dataset, manifest: Manifest, folder: Path) -> np.ndarray:
    """Write the file and read it back the way the worker does; the model input it makes."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    try:
        item = examine_file(path, manifest)
    finally:
        path.unlink()
    if item.image is None:
        raise InvalidInputError(f"serving path refused a shifted image: {item.reason} {item.detail}")
    return item.image


@dataclass
class ShiftedSet:
    """Model inputs of the shifted validation, with the sample and recipe behind each."""

    images: np.ndarray  # [N, S, S] float32
    sample_index: np.ndarray  # [N] index into the samples
    recipes: list[Acquisition]


def build(samples: list[Sample], manifest: Manifest, variants: int = 2, seed: int = 20261123,
          cache_dir: str | Path = ".cache", progress: bool = True) -> ShiftedSet:
    """The shifted validation for `samples`, built once per input size and cached."""
    key = hashlib.sha1("\n".join([SHIFT_VERSION, PREPROCESSING_VERSION, str(manifest.input_size),
                                  str(variants), str(seed), *(s.path for s in samples)])
                       .encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"shifted-{manifest.input_size}-{key}"
    rows = plan(samples, variants, seed)
    if (cache / "images.npy").is_file():
        return ShiftedSet(np.load(cache / "images.npy"), np.array([i for i, _ in rows]),
                          [r for _, r in rows])
    images = np.zeros((len(rows), manifest.input_size, manifest.input_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="cxr-shifted-") as tmp:
        for n, (index, acq) in enumerate(tqdm(rows, desc="shifted validation", unit="img",
                                              disable=not progress)):
            gray = image_file_to_gray(samples[index].path)
            images[n] = serve(render(gray, acq), manifest, Path(tmp))
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "recipes.json").write_text(json.dumps([asdict(r) for _, r in rows]))
    np.save(cache / "images.tmp.npy", images)
    (cache / "images.tmp.npy").rename(cache / "images.npy")
    return ShiftedSet(images, np.array([i for i, _ in rows]), [r for _, r in rows])


def factor_levels(recipe: Acquisition) -> dict[str, str]:
    """The level of each factor, for the per-factor breakdown of a report."""
    return {"response": recipe.response,
            "range": "full" if recipe.range_use >= 0.999 else "partial",
            "bits": str(recipe.bits), "window": recipe.window,
            "photometric": "MONOCHROME1" if recipe.monochrome1 else "MONOCHROME2",
            "aspect": f"{recipe.aspect:g}", "detector": f"{recipe.detector} px",
            "encoding": recipe.encoding}
