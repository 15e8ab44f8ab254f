"""A training run, described by a committed TOML file so the same file reproduces the same package."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError
from cxrtriage.models.architectures import ARCHITECTURES, MIN_INPUT_SIZE
from cxrtriage.models.augment import AugmentConfig
from cxrtriage.models.data import HOLDOUTS
from cxrtriage.models.manifest import INPUT_NORMALISATIONS

_CHOICES = {
    "optimizer": {"adamw", "sgd"},
    "schedule": {"cosine_restarts", "onecycle", "step"},
    "freeze": {"none", "head", "last_n"},
    "balance": {"sampler", "weights", "none"},
    "loss": {"ce", "focal"},
    "early_stopping_metric": {"auroc", "accuracy", "loss", "none"},  # none: keep the last epoch
    "input_normalisation": set(INPUT_NORMALISATIONS),
    "holdout": set(HOLDOUTS),
}


@dataclass(frozen=True)
class TrainConfig:
    name: str
    version: str
    data: str
    architecture: str = "resnet18"
    input_size: int = 160
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    base_lr: float | None = None  # learning rate for the non-head part; defaults to lr
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "onecycle"
    restart_epochs: int = 10
    step_epochs: int = 10
    step_gamma: float = 0.1
    init: str = "scratch"  # or a local ImageNet state dict, or a cxr-triage package folder
    freeze: str = "none"
    trainable_blocks: int = 2
    balance: str = "sampler"
    loss: str = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    ema_decay: float = 0.0  # >0: validate and keep an exponential moving average of the weights
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping_metric: str = "auroc"
    patience: int = 8
    val_fraction: float = 0.15
    holdout: str = "patients"  # random patients (split_seed), or "earliest" of each series (data.py)
    seed: int = 20261123
    split_seed: int | None = None  # patient split; defaults to seed. Ensemble members share it.
    threshold_rule: str = "youden"
    flag_label: str = "PNEUMONIA"
    mean: float = 0.5
    std: float = 0.25
    input_normalisation: str = "none"  # or "equalise" (models/normalisation.py)
    num_threads: int = 0
    max_samples: int = 0  # >0 limits the data, for smoke tests
    intended_population: dict[str, Any] = field(default_factory=dict)
    data_description: str = ""

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {getattr(self, name)!r}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        smallest = MIN_INPUT_SIZE.get(self.architecture, 32)
        if self.input_size < smallest:
            raise ConfigError(f"input_size must be >= {smallest} for {self.architecture}, "
                              f"got {self.input_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read `[train]` (and `[train.augment]`) from a TOML file; relative data paths are relative
    to the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text()).get("train", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from exc
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown training settings in {path}: {sorted(unknown)}")
    augment = AugmentConfig(**raw.pop("augment", {}))
    data = Path(raw.get("data", ""))
    if raw.get("data") and not data.is_absolute():
        raw["data"] = str((path.parent / data).resolve())
    init = raw.get("init", "scratch")
    if init != "scratch" and not Path(init).is_absolute():
        raw["init"] = str((path.parent / init).resolve())
    return TrainConfig(augment=augment, **raw)
