"""Numbers about the model at work, computed from the database when asked: per-version stats for
the API and dashboard, and the counts behind /metrics. Nothing here carries patient data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from cxrtriage.db.models import (
    AuditEvent,
    Feedback,
    InferenceResult,
    Instance,
    ModelVersion,
    SrExport,
    Study,
    as_utc,
)
from cxrtriage.db.review import VERDICTS, flag_probability
from cxrtriage.domain import ExportKind


@dataclass
class StudyRead:
    """One study as read by one model version."""

    study_id: int
    received_at: datetime
    result_at: datetime
    probability: float
    flagged: bool
    verdicts: list[str] = field(default_factory=list)
    first_review_at: datetime | None = None


@dataclass
class VersionReads:
    model_version_id: int
    name: str
    version: str
    threshold: float | None
    registered_at: datetime
    reads: list[StudyRead]
    not_analysed: int
    not_analysed_reasons: dict[str, int]


def _versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all())


def model_stats(session: Session) -> list[dict[str, Any]]:
    """One object per model version: studies read, flagged, positive rate and feedback, counting
    each user's current verdict once. PPV = agree / (agree + disagree) over flagged results."""
    per_study = (select(Instance.study_id.label("study_id"), InferenceResult.model_version_id.label("mv"),
                        func.max(cast(InferenceResult.flagged, Integer)).label("flagged"))
                 .join(InferenceResult, InferenceResult.instance_id == Instance.id)
                 .group_by(Instance.study_id, InferenceResult.model_version_id).subquery())
    counts = {mv: (int(n), int(flagged or 0)) for mv, n, flagged in session.execute(
        select(per_study.c.mv, func.count(), func.sum(per_study.c.flagged)).group_by(per_study.c.mv)).all()}
    verdicts: dict[int, dict[str, int]] = {}
    flagged_verdicts: dict[int, dict[str, int]] = {}
    for mv, verdict, was_flagged, n in session.execute(
            select(Feedback.model_version_id, Feedback.verdict, Feedback.flagged, func.count())
            .group_by(Feedback.model_version_id, Feedback.verdict, Feedback.flagged)).all():
        verdicts.setdefault(mv, {}).setdefault(verdict, 0)
        verdicts[mv][verdict] += int(n)
        if was_flagged:
            flagged_verdicts.setdefault(mv, {})[verdict] = int(n)
    not_analysed = dict(session.execute(
        select(SrExport.model_version_id, func.count(func.distinct(SrExport.study_id)))
        .where(SrExport.kind == ExportKind.NOT_ANALYSED).group_by(SrExport.model_version_id)).all())
    out = []
    for version in _versions(session):
        studies, flagged = counts.get(version.id, (0, 0))
        v = verdicts.get(version.id, {})
        fv = flagged_verdicts.get(version.id, {})
        agree, disagree = fv.get("agree", 0), fv.get("disagree", 0)
        out.append({
            "model_name": version.name, "model_version": version.version,
            "studies": studies, "flagged": flagged,
            "positive_rate": flagged / studies if studies else None,
            "not_analysed": int(not_analysed.get(version.id, 0)),
            "feedback": sum(v.values()), **{k: v.get(k, 0) for k in VERDICTS},
            "ppv": agree / (agree + disagree) if agree + disagree else None,
            "agreement_rate": v.get("agree", 0) / sum(v.values()) if v else None,
            "threshold": version.manifest.get("threshold"),
        })
    return out


def version_reads(session: Session) -> list[VersionReads]:
    """Every study each model version read, with its score, flag, times and verdicts: the raw
    material of the dashboard's plots."""
    prob = flag_probability(session)
    rows = session.execute(
        select(InferenceResult.model_version_id, Instance.study_id, Study.created_at,
               func.min(InferenceResult.created_at), func.max(prob),
               func.max(cast(InferenceResult.flagged, Integer)))
        .join(Instance, Instance.id == InferenceResult.instance_id)
        .join(Study, Study.id == Instance.study_id)
        .group_by(InferenceResult.model_version_id, Instance.study_id, Study.created_at)).all()
    reads: dict[int, dict[int, StudyRead]] = {}
    for mv, study_id, received, result_at, probability, flagged in rows:
        reads.setdefault(mv, {})[study_id] = StudyRead(study_id, as_utc(received), as_utc(result_at),
                                                       float(probability or 0.0), bool(flagged))
    for mv, study_id, verdict, created in session.execute(
            select(Feedback.model_version_id, Feedback.study_id, Feedback.verdict,
                   Feedback.created_at)).all():
        read = reads.get(mv, {}).get(study_id)
        if read is not None:
            read.verdicts.append(verdict)
            created = as_utc(created)
            if read.first_review_at is None or created < read.first_review_at:
                read.first_review_at = created
    reasons: dict[int, dict[str, int]] = {}
    not_analysed: dict[int, set[int]] = {}
    for mv, study_id, reason in session.execute(
            select(SrExport.model_version_id, SrExport.study_id, Study.reason_code)
            .join(Study, Study.id == SrExport.study_id)
            .where(SrExport.kind == ExportKind.NOT_ANALYSED)).all():
        if study_id in not_analysed.setdefault(mv, set()):
            continue
        not_analysed[mv].add(study_id)
        key = reason or "unknown"  # a domain.Reason code: a closed set, never file values
        reasons.setdefault(mv, {})[key] = reasons.setdefault(mv, {}).get(key, 0) + 1
    return [VersionReads(v.id, v.name, v.version, v.manifest.get("threshold"), as_utc(v.registered_at),
                         sorted(reads.get(v.id, {}).values(), key=lambda r: r.result_at),
                         len(not_analysed.get(v.id, set())), reasons.get(v.id, {}))
            for v in _versions(session)]


# --- /metrics --------------------------------------------------------------------------------


def metric_counts(session: Session) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Label sets and values of the review app's metrics, read from the database now."""
    names = {v.id: (v.name, v.version) for v in _versions(session)}

    def model_labels(mv: int | None) -> dict[str, str]:
        name, version = names.get(mv or -1, ("", ""))
        return {"model": name, "model_version": version}

    # Labelled first: PostgreSQL wants GROUP BY to name the selected expressions themselves.
    verdicts = select(AuditEvent.detail["verdict"].as_string().label("verdict"),
                      AuditEvent.detail["model_version"].as_string().label("model_version")
                      ).where(AuditEvent.action == "feedback").subquery()
    return {
        "instances": [({}, float(session.scalar(select(func.count()).select_from(Instance)) or 0))],
        "studies": [({"state": str(s)}, float(n)) for s, n in session.execute(
            select(Study.state, func.count()).group_by(Study.state)).all()],
        "exports": [({"state": str(s), "kind": str(k)}, float(n)) for s, k, n in session.execute(
            select(SrExport.state, SrExport.kind, func.count())
            .group_by(SrExport.state, SrExport.kind)).all()],
        "classifications": [({**model_labels(mv), "flagged": "true" if f else "false"}, float(n))
                            for mv, f, n in session.execute(
                                select(InferenceResult.model_version_id, InferenceResult.flagged,
                                       func.count())
                                .group_by(InferenceResult.model_version_id, InferenceResult.flagged)).all()],
        "feedback": [({"verdict": str(v or ""), "model_version": str(mv or "")}, float(n))
                     for v, mv, n in session.execute(
                         select(verdicts.c.verdict, verdicts.c.model_version, func.count())
                         .group_by(verdicts.c.verdict, verdicts.c.model_version)).all()],
    }
