"""The heat map taken from the classifying forward pass is Grad-CAM at the last feature map,
without the backward pass, for every architecture with a pooled linear head; the others fall
back to Grad-CAM itself. The predictions are those of the plain forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrtriage.models.heatmap import ActivationMaps, cam_head, gradcam, members
from cxrtriage.models.inference import Classifier
from tests.factory import random_package, sample_pixels


class _Copy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _images(size: int) -> np.ndarray:
    from cxrtriage.models.model_input import fit_to_square

    return np.stack([fit_to_square(sample_pixels(name).astype(np.float32) / 255.0, size)
                     for name in ("pneumonia-1", "normal-1", "pneumonia-2")])


@pytest.mark.parametrize("architecture", ["resnet18", "densenet121", "efficientnet_b0"])
def test_map_from_the_forward_pass_is_gradcam_at_the_last_feature_map(tmp_path: Path,
                                                                     architecture: str) -> None:
    classifier = Classifier(random_package(tmp_path / architecture, architecture, input_size=96, seed=3))
    images = _images(classifier.input_size)
    predictions, maps = classifier.predict_with_heatmaps(["a", "b", "c"], images)
    network = members(classifier.model)[0]
    head = cam_head(network)
    assert head is not None
    flag = classifier.manifest.labels.index("PNEUMONIA")
    x = classifier._normalised(images)
    if architecture == "densenet121":  # densenet's last map is `features` after a functional ReLU
        layer = torch.nn.Sequential(network.features, torch.nn.ReLU(), _Copy())
        network.features = layer  # (the copy keeps the hooked map apart from the in-place ReLU)
        layer = layer[1]
    else:
        layer = head[0]
    for i in range(len(images)):
        expected = gradcam(classifier.model, x[i : i + 1], flag, layer=layer)
        assert np.abs(maps[i] - expected).max() < 1e-4
    assert maps.shape == images.shape and maps.min() >= 0 and maps.max() <= 1
    plain = classifier.predict(["a", "b", "c"], images)
    assert [p.probabilities for p in predictions] == [p.probabilities for p in plain]


def test_an_ensembles_map_is_the_mean_of_its_members(tmp_path: Path) -> None:
    from cxrtriage.models.package import Ensemble

    classifier = Classifier(random_package(tmp_path / "one", input_size=64, seed=1))
    other = Classifier(random_package(tmp_path / "two", input_size=64, seed=2))
    images = _images(64)
    raw = []
    for c in (classifier, other):
        maps = ActivationMaps(c.model, 1)
        with maps:
            c.logits(images)
        raw.append(maps.collect(64)[0])
    classifier.model = Ensemble([classifier.model, other.model]).eval()
    _, maps = classifier.predict_with_heatmaps(["a", "b", "c"], images)
    mean = torch.relu((raw[0] + raw[1]) / 2)
    expected = (mean / mean.flatten(1).amax(1)[:, None, None]).numpy()
    assert np.abs(maps - expected).max() < 1e-5


def test_other_heads_fall_back_to_gradcam(tmp_path: Path) -> None:
    classifier = Classifier(random_package(tmp_path / "vgg", "vgg16", input_size=64))
    assert cam_head(classifier.model) is None
    images = _images(64)
    _, maps = classifier.predict_with_heatmaps(["a", "b", "c"], images)
    x = classifier._normalised(images)
    assert np.abs(maps[1] - gradcam(classifier.model, x[1:2], 1)).max() < 1e-5
