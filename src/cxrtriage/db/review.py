"""What the review app reads and writes: the worklist, one study's result, feedback, the audit log
and the patient details a radiologist needs to find the patient."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from cxrtriage.db.models import (
    AuditEvent,
    Feedback,
    InferenceResult,
    Instance,
    ModelVersion,
    SrExport,
    Study,
    StudyDetails,
    as_utc,
    utcnow,
)
from cxrtriage.domain import StudyState

VERDICTS = ("agree", "disagree", "uncertain")
FINISHED = (StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED)
IN_PROGRESS = (StudyState.RECEIVED, StudyState.QUEUED, StudyState.PROCESSING)
DETAIL_FIELDS = ("patient_name", "patient_id", "accession_number", "study_date", "study_description")


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


# --- audit log -------------------------------------------------------------------------------


def audit(session: Session, action: str, username: str = "", study_uid: str | None = None,
          client: str = "", **detail: Any) -> None:
    """Append one event. There is no function to change or remove one, and the database refuses."""
    session.add(AuditEvent(action=action, username=username[:64], study_uid=study_uid,
                           client=client[:64], detail=detail))


def audit_event(session: Session, action: str, username: str = "", study_uid: str | None = None,
                client: str = "", **detail: Any) -> int:
    """`audit`, written now: returns the event's id (for work queued from it)."""
    event = AuditEvent(action=action, username=username[:64], study_uid=study_uid, client=client[:64],
                       detail=detail)
    session.add(event)
    session.flush()
    return int(event.id)


def audit_events(session: Session, limit: int = 200, offset: int = 0, action: str = "",
                 study_uid: str = "") -> list[dict[str, Any]]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    if action:
        query = query.where(AuditEvent.action == action)
    if study_uid:
        query = query.where(AuditEvent.study_uid == study_uid)
    return [{"at": iso(e.at), "username": e.username, "action": e.action, "study_uid": e.study_uid,
             "detail": e.detail, "client": e.client} for e in session.scalars(query).all()]


def recent_failures(session: Session, username: str, client: str, window_seconds: float) -> int:
    """Failed sign-ins for this name or from this client within the window (the rate limit)."""
    since = utcnow() - timedelta(seconds=window_seconds)
    return int(session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "login_failed", AuditEvent.at >= since,
        or_(AuditEvent.username == username[:64], AuditEvent.client == client[:64]))) or 0)


# --- worklist --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistFilter:
    """The worklist's query parameters. state: "" (finished studies), "in_progress" or a state."""

    flagged: bool | None = None
    reviewed: bool | None = None
    state: str = ""
    since: date | None = None
    until: date | None = None
    model_version: str = ""
    page: int = 1
    per_page: int = 50


def flag_probability(session: Session) -> ColumnElement[float]:
    """The flag label's probability of an inference result; the label is each model's own."""
    labels: dict[str, list[int]] = {}
    for version_id, manifest in session.execute(select(ModelVersion.id, ModelVersion.manifest)).all():
        labels.setdefault(str(manifest.get("flag_label", "")), []).append(version_id)
    if not labels:
        return literal(None)  # type: ignore[return-value]
    if len(labels) == 1:
        return InferenceResult.probabilities[next(iter(labels))].as_float()
    return case(*[(InferenceResult.model_version_id.in_(ids), InferenceResult.probabilities[label].as_float())
                  for label, ids in labels.items()])


def _probability_by_study(session: Session):  # type: ignore[no-untyped-def]
    """Highest flag-label probability of each study's images, by the model that read it last."""
    return (select(Instance.study_id.label("study_id"),
                   func.max(flag_probability(session)).label("probability"))
            .join(InferenceResult, InferenceResult.instance_id == Instance.id)
            .join(Study, Study.id == Instance.study_id)
            .where(InferenceResult.model_version_id == Study.model_version_id)
            .group_by(Instance.study_id).subquery())


def _reviewed() -> ColumnElement[bool]:
    return exists().where(Feedback.study_id == Study.id,
                          Feedback.model_version_id == Study.model_version_id)


def _conditions(f: WorklistFilter, prob: Any) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.state == "in_progress":
        where.append(Study.state.in_(IN_PROGRESS))
    elif f.state:
        where.append(Study.state == f.state)
    else:
        where.append(Study.state.in_(FINISHED))
    if f.flagged is not None:
        where.append(Study.flagged.is_(True) if f.flagged else
                     or_(Study.flagged.is_(False), Study.flagged.is_(None)))
    if f.reviewed is not None:
        where.append(_reviewed() if f.reviewed else ~_reviewed())
    if f.since:
        where.append(Study.created_at >= datetime.combine(f.since, datetime.min.time(), UTC))
    if f.until:
        where.append(Study.created_at < datetime.combine(f.until + timedelta(days=1),
                                                         datetime.min.time(), UTC))
    if f.model_version:
        where.append(ModelVersion.version == f.model_version)
    return where


def worklist(session: Session, user_id: int, f: WorklistFilter, escalate_after: timedelta,
             now: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of studies in worklist order, and the number of studies that match.

    Order: flagged (most probable first); then analysed studies nobody has reviewed for longer
    than `escalate_after`, so low scores are not starved; then the other analysed studies by
    probability; then the studies that could not be analysed, with their reason."""
    now = now or utcnow()
    prob = _probability_by_study(session)
    mine = aliased(Feedback)
    escalated = and_(Study.state == StudyState.DONE, Study.flagged.is_not(True), ~_reviewed(),
                     Study.created_at <= now - escalate_after)
    tier = case((Study.state != StudyState.DONE, 3), (Study.flagged.is_(True), 0), (escalated, 1), else_=2)
    base = (select(Study.id).outerjoin(prob, prob.c.study_id == Study.id)
            .outerjoin(ModelVersion, ModelVersion.id == Study.model_version_id)
            .where(*_conditions(f, prob)))
    total = int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    query = (select(Study, prob.c.probability, ModelVersion.name, ModelVersion.version, mine.verdict,
                    escalated.label("escalated"), _reviewed().label("reviewed"), StudyDetails)
             .outerjoin(prob, prob.c.study_id == Study.id)
             .outerjoin(ModelVersion, ModelVersion.id == Study.model_version_id)
             .outerjoin(mine, and_(mine.study_id == Study.id, mine.model_version_id == Study.model_version_id,
                                   mine.user_id == user_id))
             .outerjoin(StudyDetails, StudyDetails.study_id == Study.id)
             .where(*_conditions(f, prob))
             .order_by(tier, func.coalesce(prob.c.probability, -1.0).desc(), Study.created_at, Study.id)
             .limit(f.per_page).offset((max(f.page, 1) - 1) * f.per_page))
    rows = session.execute(query).all()
    warnings = _warnings(session, [r[0] for r in rows])
    items = []
    for study, probability, model_name, version, verdict, is_escalated, reviewed, details in rows:
        items.append({
            "study_uid": study.study_uid, "state": study.state, "reason": study.reason,
            "flagged": study.flagged, "probability": probability, "model_name": model_name,
            "model_version": version, "received_at": iso(study.created_at),
            "finished_at": iso(study.finished_at), "verdict": verdict,
            "escalated": bool(is_escalated), "reviewed": bool(reviewed),
            "warnings": warnings.get(study.id, []),
            **{k: getattr(details, k) if details else None for k in DETAIL_FIELDS},
        })
    return items, total


def _warnings(session: Session, studies: list[Study]) -> dict[int, list[str]]:
    """Gating warnings of the current results of these studies."""
    if not studies:
        return {}
    model_of = {s.id: s.model_version_id for s in studies}
    out: dict[int, list[str]] = {}
    for study_id, version_id, warnings in session.execute(
            select(Instance.study_id, InferenceResult.model_version_id, InferenceResult.warnings)
            .join(InferenceResult, InferenceResult.instance_id == Instance.id)
            .where(Instance.study_id.in_(list(model_of)))).all():
        if model_of.get(study_id) == version_id:
            for warning in (warnings or {}).get("warnings", []):
                if warning not in out.setdefault(study_id, []):
                    out[study_id].append(warning)
    return out


def record_details(session: Session, study_id: int, **values: str) -> None:
    """The patient details of a study (DETAIL_FIELDS), once per study, when it arrives; two
    instances racing to record the same study both succeed."""
    if session.get(StudyDetails, study_id) is not None:
        return
    try:
        with session.begin_nested():
            session.add(StudyDetails(study_id=study_id, **{k: (values.get(k) or "")[:256]
                                                         for k in DETAIL_FIELDS}))
    except IntegrityError:
        pass  # recorded meanwhile by another request




def model_version_names(session: Session) -> list[str]:
    """Every model version string that has read studies here, for the worklist's filter."""
    return sorted(set(session.scalars(select(ModelVersion.version)).all()))


def sent_exports(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The most recently sent SRs and heat maps (recorded by the workers), for the audit page."""
    rows = session.scalars(select(SrExport).where(SrExport.sent_at.is_not(None))
                           .order_by(SrExport.sent_at.desc()).limit(limit)).all()
    return [{"at": iso(e.sent_at), "kind": str(e.kind), "state": str(e.state), "destination": e.destination,
             "sop_instance_uid": e.sr_sop_instance_uid, "attempts": e.attempts} for e in rows]
