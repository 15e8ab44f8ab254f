"""A model package's manifest: what the model is, its input contract and operating point.

Free of torch, so that processes that only need to know the model (the supervisor, the exporter,
the review app, the scheduler) never load it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from cxrtriage.domain import ModelInfo
from cxrtriage.errors import ModelError

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "MODEL_CARD.md"
UID_ROOT = "1.2.826.0.1.3680043.10.1367."  # cxr-triage root under Medical Connections' UID space
INPUT_NORMALISATIONS = ("none", "equalise")  # applied by models/normalisation.py


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
    input_normalisation: str = "none"  # see models/normalisation.py
    test_time_crops: list[float] = field(default_factory=list)  # see models/test_time.py
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
        if self.input_normalisation not in INPUT_NORMALISATIONS:
            raise ModelError(f"input_normalisation must be one of {INPUT_NORMALISATIONS}, "
                             f"got {self.input_normalisation!r}")
        if not all(0.0 < crop < 1.0 for crop in self.test_time_crops):
            raise ModelError(f"test_time_crops must be fractions in (0, 1), got {self.test_time_crops}")

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


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"model package manifest not found: expected {path}")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model package manifest {path} is invalid: {exc}") from exc
