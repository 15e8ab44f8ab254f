"""Seeding the review app's database through the db/ functions the receiver and worker use:
studies indexed, queued, claimed and finished, with results and exports. For API tests and the
worklist benchmark; the browser test sends real DICOM through the receiver instead."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrtriage.db.ingest import index_instance
from cxrtriage.db.models import Instance, Study
from cxrtriage.db.results import record_export, register_model, save_predictions
from cxrtriage.db.review import record_details
from cxrtriage.db.studies import claim_study, finish_study, queue_quiet_studies
from cxrtriage.domain import ExportKind, ModelInfo, Prediction, Reason, StoredInstance, StudyState

LABELS = ("NORMAL", "PNEUMONIA")


def register(session: Session, version: str = "1.0.0", threshold: float = 0.5) -> int:
    sha = hashlib.sha256(version.encode()).hexdigest()
    info = ModelInfo(
        name="seed-model", version=version, creator="tests", device_uid=generate_uid(), weights_sha256=sha
    )
    return register_model(
        session,
        info,
        {
            "name": "seed-model",
            "version": version,
            "labels": list(LABELS),
            "flag_label": "PNEUMONIA",
            "threshold": threshold,
        },
    )


def index(session: Session, study_uid: str, paths: list[str]) -> list[str]:
    series_uid = generate_uid()
    sops = []
    for path in paths:
        sop = generate_uid()
        index_instance(
            session,
            StoredInstance("seed", study_uid, series_uid, sop, "1.2.840.10008.5.1.4.1.1.1.1", "DX",
                           "1.2.840.10008.1.2.1", path, 1, _sha256(path), "SEEDPATIENT"),
        )
        sops.append(sop)
    return sops


def _sha256(path: str) -> str:
    """The digest the receiver indexes (the review app's decoder checks it); none for a path that
    is only a placeholder."""
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else ""


def read(
    session: Session,
    study_uid: str,
    model_version_id: int,
    probabilities: list[float] | None,
    threshold: float = 0.5,
    reason: Reason | None = None,
) -> None:
    """The worker's steps for a queued study: claim, results, finish, export. No probabilities:
    the study is skipped (not analysed) with `reason`."""
    queue_quiet_studies(session, 0.0)
    claim = claim_study(session, study_uid, 300, 3)
    assert claim is not None, "study was not queued"
    instances = session.scalars(
        select(Instance).where(Instance.study_id == claim.study_id).order_by(Instance.id)
    ).all()
    predictions = {}
    if probabilities is not None:
        for instance, p in zip(instances, probabilities, strict=True):
            predictions[instance.id] = Prediction(
                instance.sop_instance_uid,
                {"NORMAL": 1 - p, "PNEUMONIA": p},
                p >= threshold,
                threshold,
                "PNEUMONIA",
            )
            instance.state = "classified"
        save_predictions(session, model_version_id, predictions, "1", {})
    flagged = any(p.flagged for p in predictions.values()) if predictions else None
    state = StudyState.DONE if predictions else StudyState.SKIPPED
    assert finish_study(
        session,
        claim.study_id,
        claim.revision,
        claim.attempt,
        state,
        reason,
        flagged,
        model_version_id,
    )
    record_export(
        session,
        study_id=claim.study_id,
        model_version_id=model_version_id,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        supersedes_uid=None,
        kind=ExportKind.ANALYSED if predictions else ExportKind.NOT_ANALYSED,
        path="/nonexistent/sr.dcm",
        destination="",
    )


def seed_study(
    session: Session,
    model_version_id: int,
    probabilities: list[float] | None,
    threshold: float = 0.5,
    received_at: datetime | None = None,
    reason: Reason | None = None,
    finished: bool = True,
    paths: list[str] | None = None,
    details: dict[str, Any] | None = None,
) -> str:
    """One study with one image per probability (or per path), read by the model unless
    `finished` is False. Returns its Study Instance UID."""
    study_uid = generate_uid()
    count = len(probabilities) if probabilities else 1
    index(session, study_uid, paths or ["/nonexistent/image.dcm"] * count)
    if finished:
        read(session, study_uid, model_version_id, probabilities, threshold, reason)
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    assert study is not None
    if received_at is not None:
        study.created_at = received_at
    session.flush()
    record_details(session, study.id, **(details if details is not None else _details_of(paths)))
    return study_uid


def _details_of(paths: list[str] | None) -> dict[str, str]:
    """What the receiver records when a study's first instance arrives: its header's details."""
    if not paths:
        return {}
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    keywords = {"patient_name": "PatientName", "patient_id": "PatientID",
                "accession_number": "AccessionNumber", "study_date": "StudyDate",
                "study_description": "StudyDescription"}
    return {field: str(ds.get(keyword, "")) for field, keyword in keywords.items()}


def stored_image(folder: Path, study_uid: str | None = None, name: str = "pneumonia-1", scale: int = 1,
                 bits: int = 8, **attributes: Any) -> Path:
    """A sample radiograph stored as a file, `scale` times larger and at `bits` bits stored (12:
    the values shifted up four bits, a little noise added, as a detector's would be), with the
    sentinel patient data."""
    import numpy as np

    from cxrtriage.dicom.wrap import wrap_image
    from tests.factory import SENTINELS, sample_pixels

    pixels = sample_pixels(name)
    if scale > 1:
        pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
    if bits > 8:
        noise = np.random.default_rng(3).integers(0, 1 << (bits - 8), pixels.shape)
        pixels = ((pixels.astype(np.uint16) << (bits - 8)) + noise).astype(np.uint16)
    ds = wrap_image(pixels, study_uid=study_uid or generate_uid(), bits_stored=bits if bits > 8 else None,
                    **{**SENTINELS, "PatientAge": "003Y", **attributes})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_heatmap(session: Session, image: Path, model_version_id: int, folder: Path,
                   spot: tuple[float, float] = (0.3, 0.7), size: int = 64) -> Path:
    """The worker's heat map of an indexed `image`: one hot spot at `spot` (row, column as
    fractions of the model's square, which is the image's trimmed region squashed), stored as
    the worker stores it, with its export row."""
    import numpy as np

    from cxrtriage.db.results import record_export
    from cxrtriage.dicom.heatmap_writer import build_heatmap
    from cxrtriage.dicom.preprocess import dataset_to_gray
    from cxrtriage.dicom.sr_header import clean_header
    from cxrtriage.domain import ModelInfo
    from cxrtriage.models.heatmap import overlay
    from cxrtriage.models.model_input import fit_to_square

    ds = pydicom.dcmread(image)
    rows, columns = np.mgrid[0:size, 0:size]
    centre = (spot[0] * size, spot[1] * size)
    cam = np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * (size / 12) ** 2))
    heatmap = build_heatmap(clean_header(ds), overlay(fit_to_square(dataset_to_gray(ds), size),
                                                      cam.astype(np.float32)),
                            ModelInfo("seed-model", "1.0.0", "tests", "1.2.3", "ab" * 32), 1)
    path = folder / f"heatmap-{heatmap.SOPInstanceUID}.dcm"
    heatmap.save_as(path, enforce_file_format=True)
    instance = session.scalar(select(Instance).where(Instance.path == str(image)))
    assert instance is not None, "index the image first"
    record_export(session, study_id=instance.study_id, model_version_id=model_version_id,
                  series_uid=str(heatmap.SeriesInstanceUID), sop_uid=str(heatmap.SOPInstanceUID),
                  supersedes_uid=None, kind=ExportKind.HEATMAP, path=str(path), destination="",
                  source_instance_id=instance.id)
    return path
