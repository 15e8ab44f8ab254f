"""Test-time augmentation: the picture and central crops of it, each enlarged back to full size.

A package lists the crops it was measured with (`Manifest.test_time_crops`, fractions of the side);
its logits are the mean over the picture and those views. Crops, not flips: the heart is on one
side, and the networks were trained without flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def central_crop(pictures: torch.Tensor, fraction: float) -> torch.Tensor:
    """[N, 1, S, S]: the central `fraction` of each side, resized back to S x S."""
    size = pictures.shape[-1]
    side = max(1, round(size * fraction))
    start = (size - side) // 2
    crop = pictures[..., start : start + side, start : start + side]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def views(pictures: torch.Tensor, crops: list[float]) -> list[torch.Tensor]:
    """The pictures themselves first, then one view per crop fraction."""
    return [pictures] + [central_crop(pictures, fraction) for fraction in crops]
