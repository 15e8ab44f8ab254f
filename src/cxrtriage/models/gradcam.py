"""Grad-CAM (Selvaraju et al., 2017) for the flag label, on the last convolution of the network
(of the first member, for an ensemble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxrtriage.models.inference import Classifier
from cxrtriage.models.package import Ensemble


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def gradcam(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """A [0, 1] heat map the size of `image` ([S, S] in [0, 1])."""
    m = classifier.manifest
    network = classifier.model.members[0] if isinstance(classifier.model, Ensemble) else classifier.model
    layer = _last_conv(network)
    store: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out)),
             layer.register_full_backward_hook(
                 lambda _m, _gi, go: store.__setitem__("grad", go[0]))]  # type: ignore[index]
    try:
        x = ((torch.from_numpy(image).float() - m.mean) / m.std)[None, None].to(classifier.device)
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = network(x)
            network.zero_grad()
            logits[0, m.labels.index(m.flag_label)].backward()
    finally:
        for hook in hooks:
            hook.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * store["act"]).sum(dim=1, keepdim=True))
    heat = F.interpolate(cam, size=image.shape, mode="bilinear", align_corners=False)[0, 0]
    out: np.ndarray = heat.detach().cpu().numpy()
    return out / out.max() if out.max() > 0 else out


def overlay(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """The image in gray with the heat map blended in red, as uint8 RGB [S, S, 3]."""
    cam = gradcam(classifier, image)
    gray = (image * 255).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1).astype(np.float32)
    rgb[..., 0] = rgb[..., 0] * (1 - 0.5 * cam) + 255 * 0.5 * cam
    rgb[..., 1:] *= (1 - 0.5 * cam)[..., None]
    return rgb.clip(0, 255).astype(np.uint8)


def save_heatmap(classifier: Classifier, image: np.ndarray, target: Path) -> Path:
    Image.fromarray(overlay(classifier, image)).save(target)
    return target
