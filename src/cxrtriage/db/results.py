"""Model versions, inference results and SR exports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxrtriage.db.models import InferenceResult, ModelVersion, SrExport, utcnow
from cxrtriage.domain import SR_KINDS, ExportKind, ExportState, ModelInfo, Prediction


def register_model(session: Session, info: ModelInfo, manifest: dict[str, Any]) -> int:
    """The model version's id, registering it on first use. Workers starting together race to
    register the same model: the unique device UID lets one insert win, the others read its row."""
    existing = session.scalar(select(ModelVersion.id).where(ModelVersion.device_uid == info.device_uid))
    if existing is not None:
        return existing
    row = ModelVersion(name=info.name, version=info.version, weights_sha256=info.weights_sha256,
                       device_uid=info.device_uid, manifest=manifest)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return session.scalars(select(ModelVersion.id)
                               .where(ModelVersion.device_uid == info.device_uid)).one()
    return row.id


def save_predictions(session: Session, model_version_id: int, by_instance: dict[int, Prediction],
                     preprocessing_version: str, warnings: dict[int, list[str]]) -> None:
    """One row per instance and model version; a rerun replaces the earlier row."""
    if not by_instance:
        return
    session.execute(delete(InferenceResult).where(InferenceResult.model_version_id == model_version_id,
                                                  InferenceResult.instance_id.in_(list(by_instance))))
    for instance_id, pred in by_instance.items():
        session.add(InferenceResult(instance_id=instance_id, model_version_id=model_version_id,
                                    probabilities=pred.probabilities, flag_label=pred.flag_label,
                                    flagged=pred.flagged, threshold=pred.threshold,
                                    preprocessing_version=preprocessing_version,
                                    warnings={"warnings": warnings.get(instance_id, [])}))


def latest_export(session: Session, study_id: int) -> SrExport | None:
    """The study's most recent SR (heatmap exports are not SRs)."""
    return session.scalar(select(SrExport).where(SrExport.study_id == study_id,
                                                 SrExport.kind.in_(SR_KINDS))
                          .order_by(SrExport.id.desc()).limit(1))


def record_export(session: Session, *, study_id: int, model_version_id: int, series_uid: str,
                  sop_uid: str, supersedes_uid: str | None, kind: ExportKind, path: str,
                  destination: str, source_instance_id: int | None = None) -> SrExport:
    """Create the export row for a new SR or heat map (`source_instance_id`: the image a heat map
    was made from); an object with the same UID is not exported twice."""
    existing = session.scalar(select(SrExport).where(SrExport.sr_sop_instance_uid == sop_uid))
    if existing is not None:
        return existing
    row = SrExport(study_id=study_id, model_version_id=model_version_id, sr_series_uid=series_uid,
                   sr_sop_instance_uid=sop_uid, supersedes_uid=supersedes_uid, kind=kind, path=path,
                   destination=destination, source_instance_id=source_instance_id,
                   state=ExportState.PENDING if destination else ExportState.NOT_CONFIGURED,
                   next_attempt_at=utcnow() if destination else None)
    session.add(row)
    session.flush()
    return row
