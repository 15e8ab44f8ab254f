"""What the pipeline's steps know about one claimed study: the record each step reads and extends."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from pydicom.dataset import Dataset

from cxrtriage.dicom.gating import radiograph_study
from cxrtriage.domain import Claim, ExportKind, InstanceRef, Prediction, Reason, StudyState
from cxrtriage.models.examine import Examined
from cxrtriage.worker.prefetch import Ahead, Decoded


@dataclass(frozen=True)
class Output:
    """A DICOM object the report step stored, for the record step to export."""

    path: str
    dataset: Dataset
    kind: ExportKind
    source_instance_id: int | None = None  # the image a heat map was made from


@dataclass
class StudyRun:
    """What the steps know about the study so far."""

    claim: Claim
    model_version_id: int
    items: list[tuple[InstanceRef, Examined]] = field(default_factory=list)
    headers_read: bool = False  # every stored file's header was read (read_and_gate finished)
    predictions: dict[int, Prediction] = field(default_factory=dict)
    heatmaps: dict[int, np.ndarray] = field(default_factory=dict)  # by instance id, [S, S] in [0, 1]
    batched: tuple[list[Prediction], np.ndarray | None] | None = None  # its share of a joint pass
    decoding: dict[int, Future[Decoded]] = field(default_factory=dict)  # by instance id, in the pool
    ahead: Ahead | None = None  # hands the batch's images to the decoder children (decode_ahead)
    reason: Reason | None = None  # set once the study cannot be analysed
    state: StudyState | None = None
    minimal_headers: bool = False
    outputs: list[Output] = field(default_factory=list)

    def fail(self, reason: Reason, minimal_headers: bool) -> None:
        self.predictions, self.heatmaps, self.outputs = {}, {}, []
        self.reason, self.minimal_headers = reason, minimal_headers

    @cached_property
    def radiograph(self) -> bool:
        """Decided once per study (dicom/gating.py), for both the outcome and the report."""
        return radiograph_study(ref.sop_class_uid for ref in self.claim.instances)

    @property
    def headers(self) -> list[tuple[InstanceRef, Dataset]]:
        return [(ref, item.header) for ref, item in self.items if item.header is not None]
