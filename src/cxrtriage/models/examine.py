"""Examining one image before classification: read, gate, note warnings, make the model input.

One step for both the worker pipeline and `cxrtriage predict`, so the two cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.geometry import TrimBox, trim_box
from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.manifest import Manifest
from cxrtriage.models.model_input import IMAGE_SUFFIXES, fit_to_square, image_file_to_gray

_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_IN_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass
class Examined:
    """One image's outcome before classification. `image` is set when it goes to the model;
    otherwise `skipped` (the gate said no) or `failed` (it could not be read) says why."""

    header: Dataset | None = None
    image: np.ndarray | None = None
    skipped: Reason | None = None
    failed: Reason | None = None
    detail: str = ""  # the error's own message, for `predict` (never patient data)
    warnings: list[str] = field(default_factory=list)
    # Where `image` was cut from the decoded image (fit_to_square trims the same box): a heat map
    # in the model's square maps back into it (dicom/heatmap_map.map_to_source).
    trim: TrimBox | None = None

    @property
    def reason(self) -> Reason | None:
        return self.skipped or self.failed


def age_warning(ds: Dataset, manifest: Manifest) -> str:
    """A note when the patient's age is outside the model's intended population."""
    population = manifest.intended_population
    low, high = population.get("min_age_years"), population.get("max_age_years")
    match = _AGE.match(str(ds.get("PatientAge", "")))
    if not match or low is None or high is None:
        return ""
    years = int(match.group(1)) * _AGE_IN_YEARS[match.group(2)]
    if low <= years < high + 1:
        return ""
    return f"age outside intended population ({low}-{high} years)"


def note(item: Examined) -> str:
    """What a person should know about an image the gate was not enforced on (`predict`, the
    review app's "try an image"): why the worker would skip it, and its warnings."""
    skipped = [f"the worker would not analyse this image: {item.skipped.text}"] if item.skipped else []
    return "; ".join(skipped + item.warnings)


def gate(ds: Dataset, manifest: Manifest) -> Examined:
    """Whether the image goes to the model, with the warnings a reader should see."""
    item = Examined(header=ds)
    decision = gate_image(ds)
    item.skipped = decision.reason
    item.warnings = list(decision.warnings)
    if note := age_warning(ds, manifest):
        item.warnings.append(note)
    return item


def prepare(item: Examined, input_size: int, gray: np.ndarray | None = None) -> None:
    """The model input of a gated image (from its grayscale image when already decoded); an
    image that cannot be prepared is marked failed."""
    if item.header is None:
        raise ValueError("prepare needs an item with a header")
    try:
        gray = dataset_to_gray(item.header) if gray is None else gray
        item.image = fit_to_square(gray, input_size)
        item.trim = trim_box(gray)
    except InvalidInputError as exc:
        item.failed, item.detail = exc.reason, str(exc)


def examine_dataset(ds: Dataset, manifest: Manifest, enforce_gate: bool = True) -> Examined:
    """Gate and prepare. With `enforce_gate` off (`predict`), a skipped image is still prepared."""
    item = gate(ds, manifest)
    if item.skipped is None or not enforce_gate:
        prepare(item, manifest.input_size)
    return item


def examine_file(path: str | Path, manifest: Manifest, enforce_gate: bool = True) -> Examined:
    """A DICOM, PNG or JPEG file. PNG and JPEG files have no header, so no gate."""
    path = Path(path)
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Examined(image=fit_to_square(image_file_to_gray(path), manifest.input_size))
        ds = read_dataset(path)
    except InvalidInputError as exc:
        return Examined(failed=exc.reason, detail=str(exc))
    return examine_dataset(ds, manifest, enforce_gate)
