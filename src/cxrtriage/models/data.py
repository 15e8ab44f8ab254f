"""Training data: discovery (class folders, CSV, DICOM), patient-level splits, and a decoded cache."""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrtriage.errors import InvalidInputError
from cxrtriage.models.model_input import PREPROCESSING_VERSION, fit_to_square, load_gray

logger = logging.getLogger(__name__)

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^NORMAL2-IM-(\d+)-", re.IGNORECASE),
    re.compile(r"^IM-(\d+)-", re.IGNORECASE),
)


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    patient: str


def patient_of(path: str | Path) -> str:
    """The patient encoded in a Kermany file name; otherwise the file itself is the unit."""
    name = Path(path).name
    for index, pattern in enumerate(_PATIENT_PATTERNS):
        match = pattern.match(name)
        if match:
            return f"{('p', 'n2', 'im')[index]}-{match.group(1)}"
    return Path(path).stem


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() != ".md"


def discover(source: str | Path) -> list[Sample]:
    """Samples from a folder of class-named subfolders (images or DICOM) or a CSV of path,label
    with an optional patient column (paths relative to the CSV)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        with open(source, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise InvalidInputError(f"CSV {source} needs columns path,label[,patient]")
        return [Sample(str((source.parent / r["path"]).resolve()), r["label"],
                       r.get("patient") or patient_of(r["path"])) for r in rows]
    if not source.is_dir():
        raise InvalidInputError(f"training data must be a folder or a CSV file, got {source}")
    samples = [Sample(str(p), d.name, patient_of(p))
               for d in sorted(source.iterdir()) if d.is_dir()
               for p in sorted(d.rglob("*")) if _is_image(p)]
    if not samples:
        raise InvalidInputError(f"no images found in class subfolders of {source}")
    return samples


def split_by_patient(samples: list[Sample], val_fraction: float, seed: int,
                     test_fraction: float = 0.0) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Train/validation/test with every patient in exactly one split, stratified by label."""
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient].append(s)
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, items in sorted(by_patient.items()):
        by_label[max(items, key=lambda x: x.label).label].append(patient)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for _, patients in sorted(by_label.items()):
        rng.shuffle(patients)
        n_val, n_test = round(len(patients) * val_fraction), round(len(patients) * test_fraction)
        for i, patient in enumerate(patients):
            target = val if i < n_val else test if i < n_val + n_test else train
            target.extend(by_patient[patient])
    return train, val, test


HOLDOUTS = ("patients", "earliest")  # how a training config chooses its validation patients
_NUMBERED = re.compile(r"^(p-person|n2-|im-)(\d+)$")
_SERIES = {"p-person": "person", "n2-": "NORMAL2-IM", "im-": "IM"}


def series_of(patient: str) -> tuple[str, int | None]:
    """The acquisition series of a patient (`person`, `NORMAL2-IM`, `IM`, or `other`) and the
    patient's number in it. The numbers run in the order the publisher assigned them."""
    match = _NUMBERED.match(patient)
    if not match:
        return "other", None
    return _SERIES[match.group(1)], int(match.group(2))


def split_earliest(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Train/validation with each series' lowest-numbered patients held out, until they hold
    `fraction` of the series' images (so the validation keeps the training prior).

    The withheld official test split sits below the training data's numbers: the training
    normals start at IM-0115 and NORMAL2-IM-0383, and person numbers 100-300 are thinly
    populated. Holding out the earliest remaining patients of every series gives a validation
    whose patients are neighbours in acquisition order of the withheld ones, and whose whole
    batches (not random patients among them) are unseen in training. Patients outside the
    known series are ordered by name."""
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient].append(s)
    by_series: dict[str, list[tuple[int | None, str]]] = defaultdict(list)
    for patient in by_patient:
        series, number = series_of(patient)
        by_series[series].append((number, patient))
    held: set[str] = set()
    for _, patients in sorted(by_series.items()):
        patients.sort(key=lambda item: (item[0] if item[0] is not None else -1, item[1]))
        target = round(sum(len(by_patient[p]) for _, p in patients) * fraction)
        count = 0
        for _, patient in patients:
            if count >= target:
                break
            held.add(patient)
            count += len(by_patient[patient])
    train = [s for s in samples if s.patient not in held]
    val = [s for s in samples if s.patient in held]
    return train, val


def holdout_split(samples: list[Sample], holdout: str, fraction: float,
                  seed: int) -> tuple[list[Sample], list[Sample]]:
    """Train and validation samples for a training config's `holdout` kind."""
    if holdout == "earliest":
        return split_earliest(samples, fraction)
    if holdout == "patients":
        train, val, _ = split_by_patient(samples, fraction, seed)
        return train, val
    raise InvalidInputError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")


def load_cached(samples: list[Sample], size: int, cache_dir: str | Path) -> np.ndarray:
    """[N, size, size] float16 images in [0, 1], decoded once through the serving preprocessing."""
    key = hashlib.sha1(
        "\n".join([PREPROCESSING_VERSION, str(size), *(s.path for s in samples)]).encode()
    ).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"images-{size}-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    images = np.zeros((len(samples), size, size), dtype=np.float16)
    for i, sample in enumerate(tqdm(samples, desc=f"decoding to {size}px", unit="img")):
        images[i] = fit_to_square(load_gray(sample.path), size)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, images)
    tmp.rename(path)
    return images
