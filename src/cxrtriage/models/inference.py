"""Batched inference with a loaded package, on a device chosen once per process."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cxrtriage.domain import Prediction
from cxrtriage.models.normalisation import network_input
from cxrtriage.models.package import load_package
from cxrtriage.models.test_time import views

if TYPE_CHECKING:
    from cxrtriage.models.heatmap import ActivationMaps

logger = logging.getLogger(__name__)


def choose_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Classifier:
    """A model package ready to score preprocessed images ([N, S, S] floats in [0, 1])."""

    def __init__(self, package_dir: str | Path, device: torch.device | None = None,
                 batch_size: int = 16) -> None:
        self.device = device or choose_device()
        self.manifest, self.model = load_package(package_dir, self.device)
        self.batch_size = batch_size
        logger.info("model loaded", extra={"model": self.manifest.name,
                                           "model_version": self.manifest.version,
                                           "device": str(self.device)})

    @property
    def input_size(self) -> int:
        return self.manifest.input_size

    def logits(self, images: np.ndarray, maps: ActivationMaps | None = None) -> torch.Tensor:
        """Raw logits for a stack of images, averaged over the package's test-time views;
        gradients off, eval mode, in batches. `maps` captures heat maps of the plain view only."""
        m = self.manifest
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                plain, *crops = views(self._pictures(images[start : start + self.batch_size]),
                                      m.test_time_crops)
                with maps if maps is not None else nullcontext():
                    total = self._forward(plain)
                for view in crops:
                    total = total + self._forward(view)
                out.append(total / (1 + len(crops)))
        return torch.cat(out) if out else torch.zeros((0, len(m.labels)))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Temperature-scaled softmax probabilities, columns in manifest label order."""
        return torch.softmax(self.logits(images) / self.manifest.temperature, dim=1).numpy()

    def _pictures(self, images: np.ndarray) -> torch.Tensor:
        """On the model's device from here on: the test-time crops and the rank equalisation (a
        sort per view) then run on a GPU too, instead of on the worker's one Python core."""
        return torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1).to(self.device)

    def _network_input(self, pictures: torch.Tensor) -> torch.Tensor:
        m = self.manifest
        return network_input(pictures, m.input_normalisation, m.mean, m.std)

    def network_inputs(self, images: np.ndarray) -> torch.Tensor:
        """What the network is given for the plain view of a stack of images."""
        return self._network_input(self._pictures(images))

    def _forward(self, pictures: torch.Tensor) -> torch.Tensor:
        return self.model(self._network_input(pictures)).float().cpu()

    def predict(self, sop_uids: list[str], images: np.ndarray) -> list[Prediction]:
        return self._predictions(sop_uids, self.probabilities(images))

    def predict_with_heatmaps(self, sop_uids: list[str],
                              images: np.ndarray) -> tuple[list[Prediction], np.ndarray]:
        """Predictions and the flag label's heat maps ([N, S, S] in [0, 1]), from the same forward
        pass where the architecture allows it (see models/heatmap.py)."""
        from cxrtriage.models.heatmap import ActivationMaps, gradcam, normalise

        m = self.manifest
        flag_index = m.labels.index(m.flag_label)
        maps = ActivationMaps(self.model, flag_index)
        if not maps.available:
            x = self.network_inputs(images)
            cams = np.stack([gradcam(self.model, x[i : i + 1], flag_index) for i in range(len(images))])
            return self.predict(sop_uids, images), cams
        logits = self.logits(images, maps)
        cams = normalise(torch.cat(maps.collect(images.shape[-1])))
        probs = torch.softmax(logits / m.temperature, dim=1).numpy()
        return self._predictions(sop_uids, probs), cams

    def _predictions(self, sop_uids: list[str], probs: np.ndarray) -> list[Prediction]:
        m = self.manifest
        flag_index = m.labels.index(m.flag_label)
        return [
            Prediction(
                sop_instance_uid=uid,
                probabilities={label: float(p[i]) for i, label in enumerate(m.labels)},
                flagged=bool(p[flag_index] >= m.threshold),
                threshold=m.threshold,
                flag_label=m.flag_label,
            )
            for uid, p in zip(sop_uids, probs, strict=True)
        ]
