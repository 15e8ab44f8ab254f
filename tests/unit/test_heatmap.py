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
    x = classifier.network_inputs(images)
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
    x = classifier.network_inputs(images)
    assert np.abs(maps[1] - gradcam(classifier.model, x[1:2], 1)).max() < 1e-5


def test_test_time_crops_average_the_logits_and_leave_the_map_to_the_whole_picture(tmp_path: Path) -> None:
    import json

    from cxrtriage.models.test_time import central_crop

    folder = random_package(tmp_path / "tta", input_size=64, seed=1)
    images = _images(64)
    plain = Classifier(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "test_time_crops": [0.9, 0.8]}))
    viewed = Classifier(folder)
    pictures = torch.from_numpy(images)[:, None]
    expected = torch.stack([plain.logits(images)] + [
        plain.logits(central_crop(pictures, f)[:, 0].numpy()) for f in (0.9, 0.8)]).mean(dim=0)
    assert torch.allclose(viewed.logits(images), expected, atol=1e-5)
    assert not torch.allclose(viewed.logits(images), plain.logits(images), atol=1e-3)
    _, plain_maps = plain.predict_with_heatmaps(["a", "b", "c"], images)
    predictions, maps = viewed.predict_with_heatmaps(["a", "b", "c"], images)
    assert np.abs(maps - plain_maps).max() < 1e-6
    probs = torch.softmax(expected, 1)[:, 1].numpy()
    assert [p.probabilities["PNEUMONIA"] for p in predictions] == pytest.approx(probs, abs=1e-5)


def test_a_central_crop_keeps_the_middle_of_the_picture() -> None:
    from cxrtriage.models.test_time import central_crop

    picture = torch.zeros(1, 1, 40, 40)
    picture[..., 10:30, 10:30] = 1.0
    crop = central_crop(picture, 0.5)
    assert crop.shape == picture.shape and torch.all(crop == 1.0)
