"""Batch augmentation suited to radiographs: small affine changes and exposure changes.

No vertical flips ever; horizontal flips are off by default because the heart is on one side.
All randomness comes from an explicit generator so that a resumed run repeats itself.

The acquisition terms (`aspect`, `response`, `window`, `resample`, `noise`; all off by default)
mimic what the DICOM path does to a picture (see `shifted.py`): a picture stretched onto a
non-square detector and squashed back to the square by the serving code (preprocessing versions
2 and 3), a log or power detector response, a window that clips or leaves headroom, resampling
to and from detector size, and quantisation or compression noise.

`erase` (off by default) is random erasing: one rectangle of each chosen picture replaced by
noise, a regulariser that keeps the network from leaning on any one region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 10.0
    shift: float = 0.08
    zoom: float = 0.12
    shear_deg: float = 6.0
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.2
    hflip: bool = False
    aspect: float = 0.0  # probability of an aspect ratio in [1/1.25, 1.25], stretched and squashed back
    response: float = 0.0  # probability of a log or exponential detector response
    window: float = 0.0  # probability of a random linear window (clipping or headroom)
    resample: float = 0.0  # probability of down- then up-sampling by 0.45-0.9
    noise: float = 0.0  # standard deviation of added Gaussian noise (0 = none)
    erase: float = 0.0  # probability of erasing one rectangle (2-15% of the picture) with noise


def _uniform(n: int, span: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2.0 - 1.0) * span


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """images: [N, 1, H, W] in [0, 1]. Returns a new tensor of the same shape."""
    n = images.shape[0]
    angle = _uniform(n, math.radians(cfg.rotation_deg), generator)
    shear = _uniform(n, math.radians(cfg.shear_deg), generator)
    scale = 1.0 + _uniform(n, cfg.zoom, generator)
    tx, ty = _uniform(n, cfg.shift * 2, generator), _uniform(n, cfg.shift * 2, generator)
    flip = torch.ones(n)
    if cfg.hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / scale * flip
    theta[:, 0, 1] = (-sin + cos * tan) / scale
    theta[:, 1, 0] = sin / scale * flip
    theta[:, 1, 1] = (cos + sin * tan) / scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shape = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, cfg.gamma, generator)).view(shape).to(images.device)
    contrast = (1.0 + _uniform(n, cfg.contrast, generator)).view(shape).to(images.device)
    brightness = _uniform(n, cfg.brightness, generator).view(shape).to(images.device)
    out = _acquisition(out.clamp(0.0, 1.0), cfg, generator) ** gamma
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    return _erase(out, cfg.erase, generator) if cfg.erase > 0 else out


def stretch_to_aspect(image: torch.Tensor, ratio: float) -> torch.Tensor:
    """[1, S, S] resampled to width/height = `ratio` (the longer side kept at S), then squashed
    back to S x S: what serving makes of a picture stretched onto a non-square detector (versions
    2 and 3). Padding to the aspect, which version 1 served, is trimmed away since version 3."""
    size = image.shape[-1]
    new_h, new_w = (size, max(1, round(size * ratio))) if ratio < 1 else (max(1, round(size / ratio)), size)
    if (new_h, new_w) == (size, size):
        return image
    stretched = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)
    return F.interpolate(stretched, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _erase(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Random erasing: in each chosen picture one rectangle (2-15% of the area, aspect 0.3-3.3)
    becomes uniform noise."""
    n, _, height, width = images.shape
    draws = torch.rand(n, 5, generator=generator)
    noise = torch.rand(images.shape, generator=generator).to(images.device)
    out = images.clone()
    for i in range(n):
        u = draws[i]
        if u[0] >= probability:
            continue
        area = (0.02 + 0.13 * float(u[1])) * height * width
        aspect = math.exp((float(u[2]) * 2 - 1) * math.log(3.3))
        h = min(height, max(1, round(math.sqrt(area * aspect))))
        w = min(width, max(1, round(math.sqrt(area / aspect))))
        top, left = int(float(u[3]) * (height - h + 1)), int(float(u[4]) * (width - w + 1))
        out[i, :, top : top + h, left : left + w] = noise[i, :, top : top + h, left : left + w]
    return out


def _acquisition(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-image acquisition and encoding variation, [N, 1, H, W] in [0, 1]."""
    if not (cfg.aspect or cfg.response or cfg.window or cfg.resample or cfg.noise):
        return images  # draws nothing, so configs without these terms train exactly as before
    n = images.shape[0]
    draws = torch.rand(n, 9, generator=generator)
    out = images.clone()
    for i in range(n):
        u = draws[i]
        image = out[i]
        if u[0] < cfg.aspect:
            image = stretch_to_aspect(image, math.exp((float(u[1]) * 2 - 1) * math.log(1.25)))
        if u[2] < cfg.response:
            strength = 1.0 + 9.0 * float(u[3])  # log1p(a x) / log1p(a), a in [1, 10], or its inverse
            if u[3] < 0.5:
                image = torch.log1p(strength * image) / math.log1p(strength)
            else:
                image = torch.expm1(image * math.log1p(strength)) / strength
        if u[4] < cfg.window:
            low, high = -0.15 + 0.25 * float(u[5]), 0.85 + 0.3 * float(u[6])
            image = ((image - low) / (high - low)).clamp(0.0, 1.0)
        if u[7] < cfg.resample:
            size = image.shape[-2:]
            factor = 0.45 + 0.45 * float(u[8])
            small = F.interpolate(image[None], scale_factor=factor, mode="bilinear",
                                  align_corners=False, antialias=True)
            image = F.interpolate(small, size=size, mode="bilinear", align_corners=False)[0]
        out[i] = image
    if cfg.noise > 0:
        noise = torch.randn(out.shape, generator=generator) * cfg.noise
        out = out + noise.to(out.device) * (out > 0)
    return out.clamp(0.0, 1.0)
