"""Read-only views for the CLI and the review app."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrtriage.db.models import InferenceResult, Instance, Rejection, SrExport, Study
from cxrtriage.db.results import latest_export
from cxrtriage.domain import ExportKind, InstanceState


def recent_studies(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    studies = session.scalars(select(Study).order_by(Study.id.desc()).limit(limit)).all()
    rows = []
    for study in studies:
        instances = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
        results = session.scalars(select(InferenceResult).where(
            InferenceResult.instance_id.in_([i.id for i in instances]),
            InferenceResult.model_version_id == study.model_version_id)).all()
        uid_by_id = {i.id: i.sop_instance_uid for i in instances}
        export = latest_export(session, study.id)
        heatmaps = session.scalars(select(SrExport).where(SrExport.study_id == study.id,
                                                          SrExport.kind == ExportKind.HEATMAP)).all()
        flag_probs = [r.probabilities.get(r.flag_label, 0.0) for r in results]
        reasons = sorted({i.reason for i in instances if i.reason and i.state != InstanceState.CLASSIFIED})
        rows.append({
            "study_uid": study.study_uid, "state": study.state,
            "reason": study.reason or "; ".join(reasons), "reason_code": study.reason_code,
            "flagged": study.flagged,
            "max_probability": max(flag_probs) if flag_probs else None,
            "instances": len(instances),
            "instance_states": {i.sop_instance_uid: {"state": i.state, "reason": i.reason,
                                                     "transfer_syntax": i.transfer_syntax}
                                for i in instances},
            "image_results": {uid_by_id[r.instance_id]: {
                "probability": r.probabilities.get(r.flag_label), "probabilities": r.probabilities,
                "flagged": r.flagged, "threshold": r.threshold,
                "warnings": r.warnings.get("warnings", [])} for r in results},
            "sr_state": export.state if export else None,
            "sr_uid": export.sr_sop_instance_uid if export else None,
            "sr_path": export.path if export else None,
            "sr_attempts": export.attempts if export else 0,
            "sr_last_error": export.last_error if export else "",
            "heatmaps": [{"uid": h.sr_sop_instance_uid, "state": h.state, "path": h.path}
                         for h in heatmaps],
            "attempts": study.attempts,
            "received_at": study.last_received_at,
            "finished_at": study.finished_at,
        })
    return rows


def recent_rejections(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    rows = session.scalars(select(Rejection).order_by(Rejection.id.desc()).limit(limit)).all()
    return [{"created_at": r.created_at, "calling_ae": r.calling_ae, "status": f"0x{r.status:04X}",
             "sop_instance_uid": r.sop_instance_uid, "reason": r.reason,
             "quarantine_path": r.quarantine_path} for r in rows]

