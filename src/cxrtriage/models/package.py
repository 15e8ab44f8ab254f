"""Model packages: safetensors weights, a JSON manifest that describes the model, and a card.

A loaded package describes itself (labels in output order, input size, normalisation, flag label
and threshold), so nothing downstream hard-codes those facts. A package may hold a small
ensemble: extra members share the input contract and their logits are averaged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cxrtriage.errors import ModelError
from cxrtriage.models.architectures import build_model
from cxrtriage.models.manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    read_manifest,
    sha256_file,
)

logger = logging.getLogger(__name__)


class Ensemble(nn.Module):
    """Averages the logits of networks that share one input contract."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def _write_weights(path: Path, model: nn.Module, manifest: Manifest, half: bool) -> str:
    """fp16 storage halves the size; weights are cast back to fp32 when loaded."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"name": manifest.name, "version": manifest.version})
    return sha256_file(path)


def save_package(directory: str | Path, model: nn.Module, manifest: Manifest, card: str,
                 members: list[tuple[str, nn.Module]] | None = None, half: bool = False) -> Manifest:
    """Write weights (the main network, then any (architecture, network) ensemble members),
    then a manifest that records their sha256, then the card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = asdict(manifest)
    data["weights_sha256"] = _write_weights(directory / WEIGHTS_FILE, model, manifest, half)
    data["members"] = []
    for index, (architecture, member) in enumerate(members or [], start=2):
        name = f"member-{index}.safetensors"
        data["members"].append({"architecture": architecture, "weights": name,
                                "sha256": _write_weights(directory / name, member, manifest, half)})
    final = Manifest(**data)
    (directory / MANIFEST_FILE).write_text(json.dumps(asdict(final), indent=2) + "\n")
    (directory / CARD_FILE).write_text(card)
    return final


def _load_network(weights: Path, sha256: str, architecture: str, manifest: Manifest) -> nn.Module:
    if not weights.is_file():
        raise ModelError(f"model weights not found: expected {weights}")
    actual = sha256_file(weights)
    if actual != sha256:
        raise ModelError(f"sha256 of {weights} is {actual}, manifest says {sha256}")
    model = build_model(architecture, len(manifest.labels), manifest.in_channels)
    model.load_state_dict(load_file(str(weights), device="cpu"))  # copy_ casts fp16 to fp32
    return model


def load_package(directory: str | Path, device: torch.device | str = "cpu") -> tuple[Manifest, nn.Module]:
    """Load and verify a package; every weights file must match its sha256 in the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    model = _load_network(directory / WEIGHTS_FILE, manifest.weights_sha256, manifest.architecture,
                          manifest)
    if manifest.members:
        model = Ensemble([model] + [_load_network(directory / m["weights"], m["sha256"],
                                                  m["architecture"], manifest)
                                    for m in manifest.members])
    model.to(device).eval()
    return manifest, model
