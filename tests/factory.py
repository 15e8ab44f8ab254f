"""Test data: the repository's sample radiographs re-wrapped with sentinel patient data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.models.architectures import build_model
from cxrtriage.models.manifest import Manifest
from cxrtriage.models.package import save_package

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SENTINELS = {"PatientName": "SENTINELNAME^LEAKCHECK", "PatientID": "SENTINELPID4711",
             "PatientBirthDate": "20210304", "AccessionNumber": "SENTINELACC42"}
# Malformed values are what libraries quote in their warnings: a bad date, an over-long name.
MALFORMED_SENTINELS = {"PatientBirthDate": "SENTINELBADDATE",
                       "PatientName": "SENTINELLONGNAME" + "^LEAKCHECK" * 8}
SENTINEL_STRINGS = ["SENTINELNAME", "LEAKCHECK", "SENTINELPID4711", "20210304", "SENTINELACC42",
                    "SENTINELBADDATE", "SENTINELLONGNAME"]


def sample_pixels(name: str = "pneumonia-1") -> np.ndarray:
    return pydicom.dcmread(SAMPLES / f"{name}.dcm").pixel_array.astype(np.uint8)


def radiograph(study_uid: str | None = None, name: str = "pneumonia-1", **kwargs: Any) -> Dataset:
    attrs = {**SENTINELS, "PatientAge": "003Y", **kwargs}
    return wrap_image(sample_pixels(name), study_uid=study_uid or generate_uid(), **attrs)


def write_study(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def flag_logits(p_flag: np.ndarray) -> torch.Tensor:
    """Two-class logits whose softmax at temperature 1 gives `p_flag` for class 1 (the flag)."""
    p = torch.from_numpy(p_flag).double().clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def random_package(target: Path, architecture: str = "resnet18", input_size: int = 64,
                   seed: int = 0) -> Path:
    """A package with random weights, for pipeline tests only; never shipped or called a model."""
    torch.manual_seed(seed)
    manifest = Manifest(name=f"test-random-{architecture}", version="0.0.0-test",
                        architecture=architecture, input_size=input_size, in_channels=1, mean=0.5,
                        std=0.25, labels=["NORMAL", "PNEUMONIA"], flag_label="PNEUMONIA",
                        threshold=0.5, intended_population={"min_age_years": 1, "max_age_years": 5})
    save_package(target, build_model(architecture, 2), manifest, "# random weights, tests only\n")
    return target


def not_analysed_sr(source: Dataset, model: Any, key: str = "test") -> Dataset:
    """A valid "not analysed" SR of `source`'s study; `key` makes its UID distinct."""
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
    from cxrtriage.domain import Reason

    uids = report_uids(str(source.StudyInstanceUID), key, model)
    return build_report(StudyReport(model, "PNEUMONIA", 0.5, [], [clean_header(source)],
                                    not_analysed_reason=Reason.INTERNAL_ERROR), uids)


def add_sr_export(rt: Any, folder: Path, model: Any, study_uid: str | None = None, key: str = "test") -> int:
    """A stored "not analysed" SR with its export row, as the worker leaves it; the export id."""
    from sqlalchemy import select

    from cxrtriage.db.models import Study
    from cxrtriage.db.results import record_export, register_model
    from cxrtriage.domain import ExportKind

    ds = radiograph(study_uid)
    sr = not_analysed_sr(ds, model, key)
    path = folder / f"sr-{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID)))
        if study is None:
            study = Study(study_uid=str(ds.StudyInstanceUID), state="done")
            session.add(study)
            session.flush()
        model_id = register_model(session, model, {})
        export = record_export(session, study_id=study.id, model_version_id=model_id,
                               series_uid=str(sr.SeriesInstanceUID), sop_uid=str(sr.SOPInstanceUID),
                               supersedes_uid=None, kind=ExportKind.NOT_ANALYSED, path=str(path),
                               destination=rt.settings.sr_destination)
        return int(export.id)


def htj2k_radiograph(folder: Path, study_uid: str | None = None) -> tuple[Dataset, np.ndarray]:
    """A 12-bit DX whose pixels OpenJPH's `ojph_compress` encoded as lossless High-Throughput
    JPEG 2000 (another project's encoder), and the pixels it holds."""
    import subprocess

    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    from tests.servers import binary

    pixels = np.kron(sample_pixels("pneumonia-1").astype(np.uint16) << 4, np.ones((2, 2), np.uint16))
    source, codestream = folder / "htj2k-source.pgm", folder / "htj2k.j2c"
    rows, cols = pixels.shape
    source.write_bytes(f"P5\n{cols} {rows}\n4095\n".encode() + pixels.astype(">u2").tobytes())
    subprocess.run([binary("ojph_compress"), "-i", str(source), "-o", str(codestream), "-reversible",
                    "true"], check=True, capture_output=True, timeout=60)
    ds = wrap_image(pixels, study_uid=study_uid or generate_uid(), **{**SENTINELS, "PatientAge": "003Y"})
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = encapsulate([codestream.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    return ds, pixels
