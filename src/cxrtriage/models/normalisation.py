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
    share their mean rank, so a flat region stays flat.

    One sort, then linear passes over the sorted values: each run of equal values spans
    [first, last], and its pixels get (first + last + 1) / 2n. Half the time of searching the
    sorted values for every pixel, with the same result (tests/unit/test_normalisation.py)."""
    n = images.shape[0]
    flat = images.reshape(n, -1).float()
    size = flat.shape[1]
    ordered, order = flat.sort(dim=1)
    position = torch.arange(size, device=flat.device).expand(n, size)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, size - 1).flip(1).cummin(dim=1).values.flip(1)
    ranks = (first + last + 1).float() / (2.0 * size)
    return torch.empty_like(flat).scatter_(1, order, ranks).reshape(images.shape)


def network_input(images: torch.Tensor, normalisation: str, mean: float, std: float) -> torch.Tensor:
    """[N, 1, H, W] pictures in [0, 1] to the network's input."""
    if normalisation == "equalise":
        images = equalise(images)
    elif normalisation != "none":
        raise ValueError(f"unknown input normalisation {normalisation!r}; "
                         f"expected one of {INPUT_NORMALISATIONS}")
    return (images - mean) / std
