"""Model packages: safetensors weights, a JSON manifest that describes the model, and a card.

A loaded package describes itself (labels in output order, input size, normalisation, flag label
and threshold), so nothing downstream hard-codes those facts. A package may hold a small
ensemble: extra members share the input contract and their logits are averaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydicom.uid import generate_uid
from safetensors.torch import load_file, save_file
from torch import nn

from cxrtriage.domain import ModelInfo
from cxrtriage.errors import ModelError
from cxrtriage.models.architectures import build_model

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "MODEL_CARD.md"
UID_ROOT = "1.2.826.0.1.3680043.10.1367."  # cxr-triage root under Medical Connections' UID space


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    architecture: str
    input_size: int
    in_channels: int
    mean: float
    std: float
    labels: list[str]
    flag_label: str
    threshold: float
    weights_sha256: str = ""
    temperature: float = 1.0
    threshold_rule: str = ""
    creator: str = "cxr-triage"
    preprocessing_version: str = "1"
    intended_population: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    regression: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)  # extra ensemble members

    def __post_init__(self) -> None:
        if self.flag_label not in self.labels:
            raise ModelError(f"flag_label {self.flag_label!r} must be one of labels {self.labels}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ModelError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.in_channels != 1:
            raise ModelError(f"in_channels must be 1 for radiographs, got {self.in_channels}")

    @property
    def device_uid(self) -> str:
        """Changes whenever the model's outputs can change: derived from the weights' sha256 and
        the operating point (temperature and threshold), which a new version may change alone."""
        return generate_uid(prefix=UID_ROOT, entropy_srcs=[self.name, self.weights_sha256,
                                                           *(m["sha256"] for m in self.members),
                                                           repr(self.temperature), repr(self.threshold)])

    def model_info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, creator=self.creator,
                         device_uid=self.device_uid, weights_sha256=self.weights_sha256)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"model package manifest not found: expected {path}")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model package manifest {path} is invalid: {exc}") from exc


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
