"""Generated 1024 px, 16-bit DX studies for the benchmarks, written to disk.

The pixels are the repository's four sample radiographs, upscaled and with a little noise (so
that no two files are alike and the lossless codecs face something like a detector's noise).
Studies cycle through three transfer syntaxes, encoded with pydicom's own encoders (RLE: numpy;
JPEG 2000: pylibjpeg-openjpeg), each round trip checked to give back the exact pixels:
explicit VR little endian, RLE lossless and JPEG 2000 lossless. Every third study has two
frontal images, the others one. Patients are 3 years old, in the bundled model's population, so
every image is classified rather than gated out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from tests.factory import sample_pixels

from cxrtriage.dicom.wrap import wrap_image

SYNTAXES: list[UID] = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
SAMPLES = ["pneumonia-1", "normal-1", "pneumonia-2", "normal-2"]
SHORT = {ExplicitVRLittleEndian: "explicit_le", RLELossless: "rle", JPEG2000Lossless: "j2k_lossless"}


@dataclass
class Study:
    uid: str
    syntax: UID
    paths: list[Path] = field(default_factory=list)


def _base(name: str) -> np.ndarray:
    small = sample_pixels(name).astype(np.uint16) * 257
    repeat = -(-1024 // min(small.shape))
    return np.kron(small, np.ones((repeat, repeat), np.uint16))[:1024, :1024]


def _pixels(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    noise = rng.normal(0, 48, base.shape)
    return np.clip(base + noise, 0, 65535).astype(np.uint16)


def _write(ds: pydicom.Dataset, syntax: UID, path: Path, check: bool) -> None:
    original = ds.pixel_array.copy() if check else None
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    if original is not None and not np.array_equal(pydicom.dcmread(path).pixel_array, original):
        raise RuntimeError(f"{syntax.name} did not round-trip losslessly")


def make_studies(folder: Path, count: int, seed: int = 0, images_per_study: int | None = None,
                 syntaxes: list[UID] | None = None, prefix: str = "S") -> list[Study]:
    """`count` studies; `images_per_study` fixes the image count (default: 2 for every third)."""
    rng = np.random.default_rng(seed)
    bases = {name: _base(name) for name in SAMPLES}
    syntaxes = syntaxes or SYNTAXES
    checked: set[UID] = set()
    folder.mkdir(parents=True, exist_ok=True)
    studies = []
    for i in range(count):
        syntax = syntaxes[i % len(syntaxes)]
        study = Study(generate_uid(), syntax)
        images = images_per_study or (2 if i % 3 == 2 else 1)
        series = generate_uid()
        for j in range(images):
            name = SAMPLES[(i + j) % len(SAMPLES)]
            ds = wrap_image(_pixels(rng, bases[name]), study_uid=study.uid, series_uid=series,
                            PatientAge="003Y", PatientID=f"{prefix}{seed}-{i:05d}",
                            PatientName=f"BENCH^{prefix}{i:05d}", InstanceNumber=j + 1)
            path = folder / f"{prefix}{i:05d}-{j}.dcm"
            _write(ds, syntax, path, check=syntax not in checked)
            checked.add(syntax)
            study.paths.append(path)
        studies.append(study)
    return studies


def all_paths(studies: list[Study]) -> list[Path]:
    return [p for s in studies for p in s.paths]
