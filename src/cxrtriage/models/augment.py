"""Batch augmentation suited to radiographs: small affine changes and exposure changes.

No vertical flips ever; horizontal flips are off by default because the heart is on one side.
All randomness comes from an explicit generator so that a resumed run repeats itself.
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
    out = out.clamp(0.0, 1.0) ** gamma
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
