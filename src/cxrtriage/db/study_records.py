"""One study as the review app shows it: its record, the patient details recorded at arrival, the
model version that read it, its images with their current results and stored heat maps, and its
current SR. Plain records only: no ORM row leaves this module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from cxrtriage.db.models import (
    InferenceResult,
    Instance,
    ModelVersion,
    Series,
    SrExport,
    Study,
    StudyDetails,
    as_utc,
)
from cxrtriage.db.review import DETAIL_FIELDS, iso
from cxrtriage.domain import HEATMAP_KINDS, SR_KINDS, ExportKind


@dataclass(frozen=True)
class StudyRecord:
    id: int
    study_uid: str
    state: str
    reason: str
    flagged: bool | None
    model_version_id: int | None
    received_at: datetime | None
    finished_at: datetime | None

    @property
    def has_result(self) -> bool:
        return self.model_version_id is not None and self.flagged is not None


@dataclass(frozen=True)
class VersionRecord:
    """The model version that read a study, as its results name it."""

    id: int
    name: str
    version: str
    flag_label: str | None
    threshold: float | None
    weights_sha256: str


@dataclass(frozen=True)
class ImageFiles:
    """One stored image of a study: its file (and the digest it was indexed with) and the heat
    maps the worker stored for the study's current result, if any: the picture (Secondary
    Capture) and the map as data (fractional Segmentation, on the image's own grid)."""

    path: str
    sha256: str
    heatmap_path: str | None
    heatmap_map_path: str | None = None


def _record(study: Study) -> StudyRecord:
    return StudyRecord(study.id, study.study_uid, str(study.state), study.reason, study.flagged,
                       study.model_version_id, as_utc(study.created_at), as_utc(study.finished_at))


def find_study(session: Session, study_uid: str) -> StudyRecord | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    return _record(study) if study is not None else None


def study_details(session: Session, study_id: int) -> dict[str, str]:
    """Patient name, ID, accession number, study date and description, as recorded when the study
    arrived; empty strings until they are."""
    details = session.get(StudyDetails, study_id)
    return {k: getattr(details, k) if details is not None else "" for k in DETAIL_FIELDS}


def study_version(session: Session, study: StudyRecord) -> VersionRecord | None:
    if study.model_version_id is None:
        return None
    row = session.get(ModelVersion, study.model_version_id)
    if row is None:
        return None
    return VersionRecord(row.id, row.name, row.version, row.manifest.get("flag_label"),
                         row.manifest.get("threshold"), row.weights_sha256)


def _heatmap():  # type: ignore[no-untyped-def]
    return aliased(SrExport)


def study_images(session: Session, study: StudyRecord) -> list[dict[str, Any]]:
    """Each stored image of the study with the current result, if it has one, and whether the
    worker stored a heat map of it for that result."""
    heat = _heatmap()
    rows = session.execute(
        select(Instance, Series.series_uid, Series.modality, InferenceResult, heat.id)
        .join(Series, Series.id == Instance.series_id)
        .outerjoin(InferenceResult, and_(InferenceResult.instance_id == Instance.id,
                                         InferenceResult.model_version_id == study.model_version_id))
        .outerjoin(heat, and_(heat.source_instance_id == Instance.id, heat.kind.in_(HEATMAP_KINDS),
                              heat.model_version_id == study.model_version_id))
        .where(Instance.study_id == study.id).order_by(Instance.id)).all()
    images: dict[str, dict[str, Any]] = {}
    for instance, series_uid, modality, result, heatmap_id in rows:
        images.setdefault(instance.sop_instance_uid, {
            "sop_instance_uid": instance.sop_instance_uid, "sop_class_uid": instance.sop_class_uid,
            "series_uid": series_uid, "modality": modality, "state": str(instance.state),
            "reason": instance.reason,
            "probabilities": result.probabilities if result else None,
            "flag_label": result.flag_label if result else None,
            "probability": result.probabilities.get(result.flag_label) if result else None,
            "flagged": result.flagged if result else None,
            "threshold": result.threshold if result else None,
            "warnings": (result.warnings or {}).get("warnings", []) if result else [],
            "has_heatmap": heatmap_id is not None,
        })
    return list(images.values())


def image_files(session: Session, study_uid: str, sop_uid: str) -> ImageFiles | None:
    """The files behind one image of the study; None when the study has no such image."""
    row = session.execute(
        select(Instance.id, Instance.path, Instance.sha256, Study.model_version_id)
        .join(Study, Study.id == Instance.study_id)
        .where(Study.study_uid == study_uid, Instance.sop_instance_uid == sop_uid)).first()
    if row is None:
        return None
    instance_id, path, sha256, model_version_id = row
    latest = {kind: heat_path for kind, heat_path in session.execute(
        select(SrExport.kind, SrExport.path)
        .where(SrExport.source_instance_id == instance_id, SrExport.kind.in_(HEATMAP_KINDS),
               SrExport.model_version_id == model_version_id)
        .order_by(SrExport.id))}  # the latest of each kind last, so it wins
    return ImageFiles(str(path), str(sha256 or ""), latest.get(ExportKind.HEATMAP),
                      latest.get(ExportKind.HEATMAP_SEG))


def current_sr(session: Session, study_id: int) -> dict[str, Any] | None:
    """The study's most recent AI SR (assessments and heat maps are not), as the page shows it."""
    export = session.scalar(select(SrExport).where(SrExport.study_id == study_id, SrExport.kind.in_(SR_KINDS))
                            .order_by(SrExport.id.desc()).limit(1))
    if export is None:
        return None
    return {"state": str(export.state), "kind": str(export.kind),
            "sop_instance_uid": export.sr_sop_instance_uid, "attempts": export.attempts,
            "sent_at": iso(export.sent_at)}
