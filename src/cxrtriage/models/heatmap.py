"""Heat maps of where the flag label's evidence lies.

Networks that end in global average pooling and one linear layer (ResNet, DenseNet,
EfficientNet) get a class activation map (Zhou et al., 2016) from the classifying forward pass
itself: the flag label's weights applied to the last feature map. For such a network this is
exactly Grad-CAM (Selvaraju et al., 2017) taken at that feature map, whose gradients are those
weights, without the backward pass. An ensemble's map is the mean of its members' maps, as its
logits are the mean of theirs. Other heads fall back to Grad-CAM on the first member.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import models as tvm

from cxrtriage.models.package import Ensemble

CamHead = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], nn.Linear]


def members(model: nn.Module) -> list[nn.Module]:
    return list(model.members) if isinstance(model, Ensemble) else [model]


def cam_head(network: nn.Module) -> CamHead | None:
    """The module whose output is the last feature map, what the network applies to that map
    before pooling, and the linear layer on the pooled features; None for other heads."""
    if isinstance(network, tvm.ResNet) and isinstance(network.fc, nn.Linear):
        return network.layer4, (lambda x: x), network.fc
    if isinstance(network, tvm.DenseNet) and isinstance(network.classifier, nn.Linear):
        return network.features, F.relu, network.classifier
    if isinstance(network, tvm.EfficientNet) and isinstance(network.classifier[-1], nn.Linear):
        return network.features, (lambda x: x), network.classifier[-1]  # dropout, then linear
    return None


class ActivationMaps:
    """Captures, during a forward pass, each member's flag-label map ([N, h, w] per member)."""

    def __init__(self, model: nn.Module, flag_index: int) -> None:
        self.heads = [cam_head(m) for m in members(model)]
        self.flag_index = flag_index
        self.maps: list[torch.Tensor] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def available(self) -> bool:
        return all(head is not None for head in self.heads)

    def __enter__(self) -> ActivationMaps:
        for head in self.heads:
            assert head is not None
            module, before_pool, linear = head
            weights = linear.weight[self.flag_index]

            def keep(_m: nn.Module, _i: object, out: torch.Tensor, before_pool=before_pool,
                     weights=weights) -> None:
                self.maps.append(torch.einsum("nkhw,k->nhw", before_pool(out).float(), weights.float()))

            self._hooks.append(module.register_forward_hook(keep))
        return self

    def __exit__(self, *_: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def collect(self, size: int) -> list[torch.Tensor]:
        """The maps captured per batch, members averaged, upsampled to `size`, as [N, size, size]."""
        count = len(self.heads)
        out = []
        for start in range(0, len(self.maps), count):
            batch = [F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)
                     for m in self.maps[start : start + count]]
            out.append(torch.stack(batch).mean(dim=0)[:, 0].cpu())
        self.maps = []
        return out


def normalise(cam: torch.Tensor) -> np.ndarray:
    """ReLU, then each map scaled to [0, 1] by its own maximum."""
    cam = F.relu(cam)
    peak = cam.flatten(1).amax(dim=1)[:, None, None]
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map stays zero
    out: np.ndarray = (cam / peak).numpy()
    return out


def gradcam(model: nn.Module, x: torch.Tensor, flag_index: int, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM of the first member for one normalised image x ([1, 1, S, S]) at `layer` (by
    default the last convolution); [S, S] in [0, 1]."""
    network = members(model)[0]
    layer = layer or [m for m in network.modules() if isinstance(m, nn.Conv2d)][-1]
    store: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out)),
             layer.register_full_backward_hook(
                 lambda _m, _gi, go: store.__setitem__("grad", go[0]))]  # type: ignore[index]
    try:
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = network(x)
            network.zero_grad()
            logits[0, flag_index].backward()
    finally:
        for hook in hooks:
            hook.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = (weights * store["act"]).sum(dim=1, keepdim=True).detach()
    heat = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()
    return normalise(heat)[0]


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The image ([S, S] in [0, 1]) in gray with the heat map blended in red, as uint8 RGB."""
    gray = (image * 255).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1).astype(np.float32)
    rgb[..., 0] = rgb[..., 0] * (1 - 0.5 * cam) + 255 * 0.5 * cam
    rgb[..., 1:] *= (1 - 0.5 * cam)[..., None]
    return rgb.clip(0, 255).astype(np.uint8)


def save_heatmap(image: np.ndarray, cam: np.ndarray, target: Path) -> Path:
    Image.fromarray(overlay(image, cam)).save(target)
    return target
