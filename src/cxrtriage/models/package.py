"""Model packages: safetensors weights, a JSON manifest that describes the model, and a card.

A loaded package describes itself (labels in output order, input size, normalisation, flag label
and threshold), so nothing downstream hard-codes those facts.
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

    def __post_init__(self) -> None:
        if self.flag_label not in self.labels:
            raise ModelError(f"flag_label {self.flag_label!r} must be one of labels {self.labels}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ModelError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.in_channels != 1:
            raise ModelError(f"in_channels must be 1 for radiographs, got {self.in_channels}")

    @property
    def device_uid(self) -> str:
        """Changes whenever the weights change: derived from their sha256."""
        return generate_uid(prefix=UID_ROOT, entropy_srcs=[self.name, self.weights_sha256])

    def model_info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, creator=self.creator,
                         device_uid=self.device_uid, weights_sha256=self.weights_sha256)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_package(directory: str | Path, model: nn.Module, manifest: Manifest, card: str) -> Manifest:
    """Write weights, then a manifest that records their sha256, then the card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"name": manifest.name, "version": manifest.version})
    data = asdict(manifest)
    data["weights_sha256"] = sha256_file(weights)
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


def load_package(directory: str | Path, device: torch.device | str = "cpu") -> tuple[Manifest, nn.Module]:
    """Load and verify a package; the weights must match the sha256 in the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"model weights not found: expected {weights}")
    actual = sha256_file(weights)
    if actual != manifest.weights_sha256:
        raise ModelError(f"sha256 of {weights} is {actual}, manifest says {manifest.weights_sha256}")
    model = build_model(manifest.architecture, len(manifest.labels), manifest.in_channels)
    model.load_state_dict(load_file(str(weights), device="cpu"))
    model.to(device).eval()
    return manifest, model
