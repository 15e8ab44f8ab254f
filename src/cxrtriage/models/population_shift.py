"""The population-shift set: held-out pictures with variation that neither the training
augmentation nor the acquisition simulation (`shifted.py`) covers.

Each shift is one thing a different hospital, ward or year would put in front of the model:

- `rotation`: the patient tilted by 12-20 degrees in the plane, off-centre by up to 5%
  (training augments at most 10 degrees);
- `collimation`: the beam limited by the collimator on two to four sides, the bands dark or
  bright and textured (scatter), so that padding trimming does not remove them;
- `markers`: burned-in text, a side marker ("L", "R") and an annotation line ("AP", "PORTABLE",
  a date);
- `lines`: tubes and lines, a midline tube, ECG lead wires and electrodes;
- `low_dose`: quantum noise that grows with the signal, and the blur of a noisy detector;
- `crop`: a tighter, off-centre field of view (the chest filling 115-135% of the frame);
- `combined`: three of the above together.

Each picture is shifted at its source resolution and then goes through the serving geometry
(`model_input.fit_to_square`: trim, squash), as a JPEG sent to `predict` would. Every draw comes
from a generator seeded by the set's seed, the shift and the file name, so the set is the same
on every machine.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

POPULATION_SHIFT_VERSION = "1"
SINGLE_SHIFTS = ("rotation", "collimation", "markers", "lines", "low_dose", "crop")
SHIFTS = (*SINGLE_SHIFTS, "combined")
_TEXTS = ("AP", "PORTABLE", "AP SUPINE", "ERECT", "12/03/2016", "MOBILE")


def shift_rng(seed: int, shift: str, name: str) -> np.random.Generator:
    """The generator of one picture's shift: a function of the seed, the shift and the file name."""
    key = int(hashlib.sha1(f"{shift}/{Path(name).name}".encode()).hexdigest()[:12], 16)
    return np.random.default_rng([seed, key])


def _affine(gray: np.ndarray, angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """Rotate by `angle_deg`, zoom by `scale` (>1 enlarges) and move by (tx, ty) in units of half
    the side; what falls outside the picture is black."""
    angle = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(angle) / scale, -math.sin(angle) / scale, tx],
                          [math.sin(angle) / scale, math.cos(angle) / scale, ty]],
                         dtype=torch.float32)[None]
    image = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0].numpy()


def rotate(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.uniform(12.0, 20.0)) * (1 if rng.random() < 0.5 else -1)
    tx, ty = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    return _affine(gray, angle, 1.0, tx, ty)


def crop(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scale = float(rng.uniform(1.15, 1.35))
    tx, ty = (float(v) for v in rng.uniform(-0.16, 0.16, 2))
    return _affine(gray, 0.0, scale, tx, ty)


def collimate(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = gray.shape
    out = gray.astype(np.float32).copy()
    sides = rng.permutation(4)[: int(rng.integers(2, 5))]
    bright = rng.random() < 0.5
    for side in sides:
        fraction = float(rng.uniform(0.04, 0.14))
        along = height if side in (0, 1) else width
        band = max(2, round(along * fraction))
        ramp = np.clip(np.arange(band, dtype=np.float32)[::-1] / max(1.0, band * 0.15), 0.0, 1.0)
        # ramp: 1 deep in the band, falling to 0 at its inner edge (a soft collimator edge)
        if side == 0:
            region, weight = out[:band, :], ramp[:, None]
        elif side == 1:
            region, weight = out[height - band :, :], ramp[::-1][:, None]
        elif side == 2:
            region, weight = out[:, :band], ramp[None, :]
        else:
            region, weight = out[:, width - band :], ramp[::-1][None, :]
        scatter = rng.normal(0.0, 0.02, region.shape).astype(np.float32)
        target = (0.8 + 0.2 * region if bright else 0.05 + 0.25 * region) + scatter
        region[...] = (1 - weight) * region + weight * target
    return np.clip(out, 0.0, 1.0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_on(gray: np.ndarray, draw: object) -> np.ndarray:
    """Composite what `draw(ImageDraw, width, height)` paints (white on black) over `gray`."""
    height, width = gray.shape
    mask = Image.new("L", (width, height), 0)
    draw(ImageDraw.Draw(mask), width, height)  # type: ignore[operator]
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    return np.clip(gray * (1 - alpha) + alpha * 0.97, 0.0, 1.0).astype(np.float32)


def mark(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = "L" if rng.random() < 0.5 else "R"
    corner = int(rng.integers(4))
    text = _TEXTS[int(rng.integers(len(_TEXTS)))]

    def paint(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
        big = max(8, round(height * rng.uniform(0.06, 0.11)))
        x = round(width * rng.uniform(0.03, 0.1))
        y = round(height * rng.uniform(0.03, 0.1))
        if corner in (1, 3):
            x = width - x - big
        if corner in (2, 3):
            y = height - y - big
        draw.text((x, y), side, fill=255, font=_font(big))
        small = max(6, round(height * rng.uniform(0.035, 0.05)))
        top = corner >= 2  # the annotation goes on the other edge from the marker
        draw.text((round(width * rng.uniform(0.2, 0.5)),
                   round(height * (0.03 if top else 0.92))), text, fill=255, font=_font(small))

    return _draw_on(gray, paint)


def add_lines(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    def paint(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
        scale = max(1, round(width / 224))
        if rng.random() < 0.7:  # a midline tube from the top into the abdomen
            x, phase = width * rng.uniform(0.45, 0.55), rng.uniform(0.0, 2 * math.pi)
            points = [(x + width * 0.03 * math.sin(t * 3 + phase), height * t)
                      for t in np.linspace(0.0, rng.uniform(0.7, 1.0), 12)]
            draw.line(points, fill=255, width=2 * scale)
        for _ in range(int(rng.integers(2, 5))):  # ECG leads: a wire ending in an electrode
            start = (width * rng.uniform(0.0, 1.0), height * rng.choice([0.0, 1.0]))
            end = (width * rng.uniform(0.2, 0.8), height * rng.uniform(0.2, 0.8))
            bend = (width * rng.uniform(0.1, 0.9), height * rng.uniform(0.1, 0.9))
            points = [((1 - t) ** 2 * start[0] + 2 * (1 - t) * t * bend[0] + t**2 * end[0],
                       (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * bend[1] + t**2 * end[1])
                      for t in np.linspace(0.0, 1.0, 24)]
            draw.line(points, fill=230, width=scale)
            radius = width * rng.uniform(0.015, 0.025)
            draw.ellipse([end[0] - radius, end[1] - radius, end[0] + radius, end[1] + radius],
                         fill=255)

    return _draw_on(gray, paint)


def low_dose(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = float(rng.uniform(0.04, 0.08))
    noisy = gray + rng.normal(0.0, 1.0, gray.shape) * sigma * np.sqrt(np.clip(gray, 0.0, 1.0) + 0.05)
    image = torch.from_numpy(np.clip(noisy, 0.0, 1.0).astype(np.float32))[None, None]
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None] / 16.0
    blurred = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel)
    return blurred[0, 0].clamp(0.0, 1.0).numpy()


_APPLY = {"rotation": rotate, "collimation": collimate, "markers": mark, "lines": add_lines,
          "low_dose": low_dose, "crop": crop}


def apply_shift(gray: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """`gray` ([0, 1], 2-D) with one shift applied; `combined` applies three single shifts, in
    the order of `SINGLE_SHIFTS` (geometry and collimation before burned-in objects)."""
    if gray.ndim != 2:
        raise ValueError(f"gray must be a 2-D picture, got shape {gray.shape}")
    if shift == "combined":
        chosen = sorted(rng.choice(len(SINGLE_SHIFTS), 3, replace=False))
        for index in chosen:
            gray = _APPLY[SINGLE_SHIFTS[index]](gray, rng)
        return gray.astype(np.float32)
    if shift not in _APPLY:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    return _APPLY[shift](gray, rng).astype(np.float32)
