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


# Where a study's processing has ended (until a new instance or a reprocessing reopens it).
FINISHED: tuple[StudyState, ...] = (StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED)


class InstanceState(enum.StrEnum):
    STORED = "stored"
    CLASSIFIED = "classified"
    SKIPPED = "skipped"
    FAILED = "failed"
    REJECTED = "rejected"


class TrialState(enum.StrEnum):
    """A "try an image" request: waiting for a worker, answered, or answered with a reason."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class SeriesState(enum.StrEnum):
    """A series is classified when any of its images was, else its images' common state, or
    mixed; received until its study is first recorded."""

    RECEIVED = "received"
    STORED = "stored"
    CLASSIFIED = "classified"
    SKIPPED = "skipped"
    FAILED = "failed"
    REJECTED = "rejected"
    MIXED = "mixed"


class ExportKind(enum.StrEnum):
    """What an export row sends: our AI SR (analysed or not) or a heat map object."""

    ANALYSED = "analysed"
    NOT_ANALYSED = "not_analysed"
    HEATMAP = "heatmap"  # the heat map as a picture: an RGB Secondary Capture (any viewer shows it)
    HEATMAP_SEG = "heatmap_seg"  # the heat map as data: a fractional Segmentation over the image
    ASSESSMENT = "assessment"  # a radiologist's verdict on an AI SR (review app); not an AI result


SR_KINDS = (ExportKind.ANALYSED, ExportKind.NOT_ANALYSED)
HEATMAP_KINDS = (ExportKind.HEATMAP, ExportKind.HEATMAP_SEG)  # one object each per classified image


class Reason(enum.StrEnum):
    """The closed set of reasons why an image is skipped or a study is not analysed.

    Each has fixed text: reasons appear in SRs, the database, dashboards and metric labels, so
    they never quote values from the file.
    """

    NOT_RADIOGRAPH = "not-radiograph"
    NOT_CHEST = "not-chest"
    NOT_FRONTAL = "not-frontal"
    NO_FRONTAL_CHEST_IMAGE = "no-frontal-chest-image"
    UNREADABLE_FILE = "unreadable-file"
    UNSUPPORTED_PIXELS = "unsupported-pixels"
    UNDECODABLE_PIXELS = "undecodable-pixels"
    STORED_FILE_CHANGED = "stored-file-changed"  # its sha256 is no longer the one indexed
    NO_IMAGE_ANALYSABLE = "no-image-analysable"
    PATIENT_IDENTITY_INCONSISTENT = "patient-identity-inconsistent"
    ATTEMPTS_EXHAUSTED = "attempts-exhausted"
    INTERNAL_ERROR = "internal-error"
    STORAGE_ERROR = "storage-error"
    MODEL_ERROR = "model-error"
    REPORT_ERROR = "report-error"

    @property
    def text(self) -> str:
        return REASON_TEXT[self]


REASON_TEXT = {
    Reason.NOT_RADIOGRAPH: "not a radiograph (SOP class or modality)",
    Reason.NOT_CHEST: "body part is not chest",
    Reason.NOT_FRONTAL: "not a frontal (PA/AP) view",
    Reason.NO_FRONTAL_CHEST_IMAGE: "no frontal chest radiograph in the study",
    Reason.UNREADABLE_FILE: "file cannot be read as DICOM",
    Reason.UNSUPPORTED_PIXELS: "pixel data attributes are not supported",
    Reason.UNDECODABLE_PIXELS: "pixel data cannot be decoded",
    Reason.STORED_FILE_CHANGED: "the stored file changed after it was received",
    Reason.NO_IMAGE_ANALYSABLE: "no image of the study could be analysed",
    Reason.PATIENT_IDENTITY_INCONSISTENT: "instances of the study name different patients",
    Reason.ATTEMPTS_EXHAUSTED: "processing stopped repeatedly without finishing",
    Reason.INTERNAL_ERROR: "internal error while processing",
    Reason.STORAGE_ERROR: "storage could not be read or written",
    Reason.MODEL_ERROR: "the model could not classify the images",
    Reason.REPORT_ERROR: "the report could not be built from the headers",
}


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
    reason: Reason | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class StoredInstance:
    """An instance the receiver wrote durably, for the index to record."""

    association_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    path: str
    size_bytes: int
    sha256: str = ""
    patient_id: str = ""
    details: StudyHeader | None = None  # for the worklist, recorded with the study's first instance


@dataclass(frozen=True)
class StudyHeader:
    """What a radiologist needs to find the patient, read from the header at arrival so that the
    review app never parses DICOM during a request. Patient data: never logged."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""


@dataclass(frozen=True)
class RefusedInstance:
    """An instance refused at C-STORE: the status sent and a reason a person can read."""

    association_id: str
    calling_ae: str
    status: int
    reason: str
    sop_instance_uid: str | None
    quarantine_path: str | None


@dataclass(frozen=True)
class InstanceRef:
    """A stored instance of a study, as the worker reads it."""

    instance_id: int
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one study: what to read, and what the study already has."""

    study_id: int
    study_uid: str
    revision: int
    attempt: int
    exhausted: bool  # past the attempt limit: report "not analysed" without reading again
    instances: tuple[InstanceRef, ...]
    previous_sr_uid: str | None  # the study's latest SR, which a new one supersedes
    previous_sr_path: str | None
    sr_uids: frozenset[str]  # every SR of ours the study has had
