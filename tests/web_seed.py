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
