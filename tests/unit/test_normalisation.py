"""Rank equalisation: increasing intensity changes reach the network as the same picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrtriage.models.normalisation import equalise, network_input
from tests.factory import sample_pixels


def _picture() -> torch.Tensor:
    return torch.from_numpy(sample_pixels("normal-1").astype(np.float32) / 255.0)[None, None]


@pytest.mark.parametrize("change", [
    lambda x: torch.log1p(8 * x) / np.log1p(8),  # a log detector response
    lambda x: x ** 1.6,  # a power response
    lambda x: 0.2 + 0.5 * x,  # half the range, raised: a flat picture without a window
    lambda x: 1 - (1 - x) ** 2,
])
def test_increasing_changes_of_intensity_leave_the_input_unchanged(change):
    picture = _picture()
    assert torch.equal(equalise(change(picture)), equalise(picture))


def test_ranks_span_the_unit_interval_with_mean_one_half():
    out = equalise(torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.min() > 0 and out.max() < 1
    assert out.mean(dim=(1, 2, 3)) == pytest.approx([0.5] * 3, abs=1e-6)


def test_equal_values_share_their_mean_rank():
    image = torch.tensor([[0.0, 0.0], [0.3, 0.9]]).reshape(1, 1, 2, 2)
    assert equalise(image).flatten().tolist() == pytest.approx([0.25, 0.25, 0.625, 0.875])
    assert torch.all(equalise(torch.full((1, 1, 4, 4), 0.7)) == 0.5)


def _mid_ranks_by_search(images: torch.Tensor) -> torch.Tensor:
    """The definition: how many values lie below each pixel, and how many not above it."""
    flat = images.reshape(images.shape[0], -1)
    ordered = flat.sort(dim=1).values
    below = torch.searchsorted(ordered, flat, side="left")
    not_above = torch.searchsorted(ordered, flat, side="right")
    return ((below + not_above).float() / (2.0 * flat.shape[1])).reshape(images.shape)


@pytest.mark.parametrize("images", [
    torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1)),  # no ties
    torch.randint(0, 7, (3, 1, 40, 40), generator=torch.Generator().manual_seed(2)).float() / 6,  # many
    torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)]),  # one run each
])
def test_equalise_gives_exactly_the_mid_ranks_by_definition(images):
    assert torch.equal(equalise(images), _mid_ranks_by_search(images))


def test_each_picture_is_ranked_on_its_own():
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16) * 0.1
    both = equalise(torch.cat([a, b]))
    assert torch.equal(both[:1], equalise(a)) and torch.equal(both[1:], equalise(b))


def test_none_is_the_plain_mean_and_std_and_unknown_names_are_refused():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(network_input(x, "none", 0.5, 0.25), (x - 0.5) / 0.25)
    with pytest.raises(ValueError, match="clahe"):
        network_input(x, "clahe", 0.5, 0.25)


@pytest.mark.parametrize("field", [{"input_normalisation": "clahe"}, {"test_time_crops": [0.9, 1.2]}])
def test_a_manifest_with_an_unknown_input_contract_is_refused(field):
    from cxrtriage.errors import ModelError
    from cxrtriage.models.manifest import Manifest

    with pytest.raises(ModelError, match=next(iter(field))):
        Manifest(name="m", version="1", architecture="resnet18", input_size=64, in_channels=1,
                 mean=0.5, std=0.25, labels=["NORMAL", "PNEUMONIA"], flag_label="PNEUMONIA",
                 threshold=0.5, **field)
