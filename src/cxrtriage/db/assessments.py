"""What an assessment SR is written from, and how it is recorded (worker/assessment.py).

A verdict is one `feedback` audit event; its SR references the study's current AI SR. The SR's
export row and an `assessment_sr` audit event are written together, once per SR."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrtriage.db.models import AuditEvent, ModelVersion, SrExport, Study
from cxrtriage.db.results import record_export
from cxrtriage.db.review import audit
from cxrtriage.domain import SR_KINDS, ExportKind


@dataclass(frozen=True)
class AssessmentSource:
    """One verdict and the AI SR it assesses."""

    event_id: int
    study_id: int
    study_uid: str
    model_version_id: int
    model: str  # name and version of the model whose result is assessed
    username: str
    client: str
    verdict: str
    comment: str
    sequence: int  # the how-many-th verdict of this user on this study
    ai_sr_path: str
    ai_sr_uid: str


class NoAiSr(LookupError):
    """The study's current result has no AI SR to reference."""


def assessment_source(session: Session, event_id: int) -> AssessmentSource | None:
    """The verdict recorded as audit event `event_id`; None when there is no such feedback event
    or its study is gone. NoAiSr when the study's current result has no stored AI SR."""
    event = session.get(AuditEvent, event_id)
    if event is None or event.action != "feedback" or not event.study_uid:
        return None
    study = session.scalar(select(Study).where(Study.study_uid == event.study_uid))
    if study is None or study.model_version_id is None:
        return None
    export = session.scalar(select(SrExport).where(SrExport.study_id == study.id, SrExport.kind.in_(SR_KINDS))
                            .order_by(SrExport.id.desc()).limit(1))
    if export is None or export.model_version_id != study.model_version_id:
        raise NoAiSr("no stored AI SR of the current result to reference")
    version = session.get(ModelVersion, study.model_version_id)
    sequence = int(session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "feedback", AuditEvent.study_uid == event.study_uid,
        AuditEvent.username == event.username, AuditEvent.id <= event.id)) or 1)
    detail = event.detail or {}
    return AssessmentSource(
        event_id=event.id, study_id=study.id, study_uid=study.study_uid,
        model_version_id=study.model_version_id,
        model=f"{version.name} {version.version}" if version else "", username=event.username,
        client=event.client, verdict=str(detail.get("verdict", "")), comment=str(detail.get("comment") or ""),
        sequence=sequence, ai_sr_path=export.path, ai_sr_uid=export.sr_sop_instance_uid)


def assessment_recorded(session: Session, sop_uid: str) -> bool:
    return session.scalar(select(SrExport.id).where(SrExport.sr_sop_instance_uid == sop_uid)) is not None


def record_assessment(session: Session, source: AssessmentSource, series_uid: str, sop_uid: str, path: str,
                      destination: str) -> int:
    """The stored assessment SR's export row and its audit event; returns the export's id."""
    export = record_export(session, study_id=source.study_id, model_version_id=source.model_version_id,
                           series_uid=series_uid, sop_uid=sop_uid, supersedes_uid=None,
                           kind=ExportKind.ASSESSMENT, path=path, destination=destination)
    audit(session, "assessment_sr", source.username, source.study_uid, source.client,
          sop_instance_uid=sop_uid, assessed_sr=source.ai_sr_uid, verdict=source.verdict,
          feedback_event=source.event_id)
    return int(export.id)
