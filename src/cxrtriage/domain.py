"""Frozen value objects that cross layer boundaries (dicom/, models/, db/, worker/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class StudyState(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class InstanceState(enum.StrEnum):
    STORED = "stored"
    CLASSIFIED = "classified"
    SKIPPED = "skipped"
    FAILED = "failed"
    REJECTED = "rejected"


class ExportState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True)
class ModelInfo:
    """Provenance carried by every result and SR: who made the model and which weights ran."""

    name: str
    version: str
    creator: str
    device_uid: str
    weights_sha256: str


@dataclass(frozen=True)
class Prediction:
    """One image's model output: probabilities in label order and the flag decision."""

    sop_instance_uid: str
    probabilities: dict[str, float]
    flagged: bool
    threshold: float
    flag_label: str


@dataclass(frozen=True)
class GateDecision:
    """Whether an image goes to the classifier, and why not when it does not."""

    accepted: bool
    reason: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
