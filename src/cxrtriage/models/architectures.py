"""torchvision classifiers rebuilt for single-channel radiographs, never with downloaded weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from cxrtriage.errors import ModelError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "densenet121": tvm.densenet121,
    "efficientnet_b0": tvm.efficientnet_b0,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
    "vgg16": tvm.vgg16_bn,
    "inception_v3": tvm.inception_v3,
}
ARCHITECTURES = tuple(_BUILDERS)
MIN_INPUT_SIZE = {"inception_v3": 75}


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            return parent, attr, module
    raise ModelError("architecture has no convolution")


def head_module_name(architecture: str) -> str:
    """The attribute holding the classification head, for freezing and per-part learning rates."""
    return "fc" if architecture.startswith(("resnet", "inception")) else "classifier"


def _replace_head(model: nn.Module, architecture: str, num_classes: int) -> None:
    name = head_module_name(architecture)
    head = getattr(model, name)
    if isinstance(head, nn.Linear):
        setattr(model, name, nn.Linear(head.in_features, num_classes))
        return
    layers = list(head.children())
    for index in range(len(layers) - 1, -1, -1):
        if isinstance(layers[index], nn.Linear):
            head[index] = nn.Linear(layers[index].in_features, num_classes)
            return
    raise ModelError(f"cannot find the linear head of {architecture}")


def build_model(architecture: str, num_classes: int, in_channels: int = 1) -> nn.Module:
    """A randomly initialised network; weights come later from a local file only."""
    if architecture not in _BUILDERS:
        raise ModelError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    kwargs: dict[str, object] = {"weights": None}
    if architecture == "inception_v3":
        kwargs.update(aux_logits=False, init_weights=True, transform_input=False)
    model = _BUILDERS[architecture](**kwargs)
    parent, attr, conv = _first_conv(model)
    if conv.in_channels != in_channels:
        setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                                        conv.stride, conv.padding,  # type: ignore[arg-type]
                                        bias=conv.bias is not None))
    _replace_head(model, architecture, num_classes)
    return model


def adapt_imagenet_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit an RGB ImageNet state dict to our model: sum the first conv over colour, drop the head."""
    own = model.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            adapted[key] = value
        elif value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1 \
                and value.shape[0] == target.shape[0]:
            adapted[key] = value.sum(dim=1, keepdim=True)
    return adapted
