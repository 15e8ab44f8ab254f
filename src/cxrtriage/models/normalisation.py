"""The last step before the network: [0, 1] pictures to the tensor a package was trained on.

`equalise` replaces every pixel by its rank within its own picture (histogram equalisation
without bins). Any increasing change of intensity leaves the ranks as they were, so a detector's
response curve, a window that clips nothing, the bit depth and a brightness or contrast change
reach the network as the same picture. Training and serving both call `network_input`, after
augmentation and after the shared geometry of `model_input.py`.
"""

from __future__ import annotations

import torch

from cxrtriage.models.manifest import INPUT_NORMALISATIONS


def equalise(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] to the mid-rank of each pixel within its picture, in [0, 1]. Equal values
    share their mean rank, so a flat region stays flat."""
    n = images.shape[0]
    flat = images.reshape(n, -1).float()
    ordered = flat.sort(dim=1).values
    below = torch.searchsorted(ordered, flat, side="left")
    not_above = torch.searchsorted(ordered, flat, side="right")
    ranks = (below + not_above).float() / (2.0 * flat.shape[1])
    return ranks.reshape(images.shape)


def network_input(images: torch.Tensor, normalisation: str, mean: float, std: float) -> torch.Tensor:
    """[N, 1, H, W] pictures in [0, 1] to the network's input."""
    if normalisation == "equalise":
        images = equalise(images)
    elif normalisation != "none":
        raise ValueError(f"unknown input normalisation {normalisation!r}; "
                         f"expected one of {INPUT_NORMALISATIONS}")
    return (images - mean) / std
