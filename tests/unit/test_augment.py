"""The training augmentation's aspect term (stretch and squash back, as serving does) and random
erasing."""

from __future__ import annotations

import math

import pytest
import torch

from cxrtriage.models.augment import AugmentConfig, _erase, augment_batch, stretch_to_aspect


def _gradient(size: int = 32, along: str = "rows") -> torch.Tensor:
    ramp = torch.linspace(0.1, 0.9, size)
    return (ramp[:, None].expand(size, size) if along == "rows" else ramp[None, :].expand(size, size))[None]


@pytest.mark.parametrize("ratio", [1.0, 1 / 1.25, 1.25])
def test_stretch_keeps_shape_and_never_pads_with_black(ratio):
    image = torch.full((1, 32, 32), 0.6)
    out = stretch_to_aspect(image, ratio)
    assert out.shape == image.shape
    assert torch.allclose(out, image, atol=1e-5), "a flat picture stays flat: no black band"


@pytest.mark.parametrize(("ratio", "along"), [
    (0.8, "rows"),  # narrower detector: only the width is resampled, so a picture that varies
    (1.25, "columns"),  # only down the rows is unchanged, and the other way round
])
def test_stretch_resamples_only_the_shortened_axis(ratio, along):
    image = _gradient(along=along)
    assert torch.allclose(stretch_to_aspect(image, ratio), image, atol=1e-5)


@pytest.mark.parametrize(("ratio", "along"), [(0.8, "columns"), (1.25, "rows")])
def test_stretch_changes_detail_along_the_shortened_axis(ratio, along):
    image = torch.zeros(1, 32, 32)
    if along == "columns":
        image[..., ::2] = 1.0  # fine stripes across the width
    else:
        image[..., ::2, :] = 1.0
    out = stretch_to_aspect(image, ratio)
    assert float((out - image).abs().mean()) > 0.1
    assert 0.3 < float(out.mean()) < 0.7, "brightness is kept: squashed back, not padded"


def test_aspect_term_keeps_the_mean_brightness_of_a_flat_picture():
    images = torch.full((6, 1, 32, 32), 0.5)
    cfg = AugmentConfig(0, 0, 0, 0, 0, 0, 0, False, aspect=1.0)
    out = augment_batch(images, cfg, torch.Generator().manual_seed(1))
    assert torch.allclose(out, images, atol=1e-4)


def test_erase_off_draws_nothing_and_on_replaces_one_rectangle():
    images = torch.full((8, 1, 40, 40), 0.5)
    off = AugmentConfig(0, 0, 0, 0, 0, 0, 0, False)
    generator = torch.Generator().manual_seed(5)
    assert torch.allclose(augment_batch(images, off, generator), images, atol=1e-5)
    out = _erase(images, 1.0, torch.Generator().manual_seed(5))
    for i in range(len(images)):
        changed = (out[i] != images[i])
        fraction = float(changed.float().mean())
        assert 0.01 < fraction <= 0.16, fraction
        rows, cols = changed[0].any(dim=1).nonzero(), changed[0].any(dim=0).nonzero()
        box = (int(rows.max() - rows.min()) + 1) * (int(cols.max() - cols.min()) + 1)
        assert int(changed.sum()) == box, "the erased pixels fill one rectangle"
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_erase_repeats_with_the_same_generator():
    images = torch.rand(4, 1, 24, 24)
    first = _erase(images, 0.5, torch.Generator().manual_seed(9))
    again = _erase(images, 0.5, torch.Generator().manual_seed(9))
    assert torch.equal(first, again)


@pytest.mark.parametrize("probability", [0.0, math.nextafter(0.0, 1.0)])
def test_erase_with_no_chance_changes_nothing(probability):
    images = torch.rand(3, 1, 16, 16)
    assert torch.equal(_erase(images, probability, torch.Generator().manual_seed(0)), images)
