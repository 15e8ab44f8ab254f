"""Queries for operating the service: reprocessing selections, the nightly lock, model versions
and the numbers behind the per-process metrics. Only UIDs, ids, states and counts leave here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxrtriage.db.models import (
    InferenceResult,
    Instance,
    ModelVersion,
    SchedulerRun,
    SrExport,
    Study,
    as_utc,
    utcnow,
)
from cxrtriage.domain import FINISHED, SR_KINDS, ExportState, StudyState

WAITING_STATES = (StudyState.RECEIVED, StudyState.QUEUED, StudyState.PROCESSING)


@dataclass(frozen=True)
class ReprocessSelection:
    """Which finished studies to read again. Every given criterion must hold."""

    not_read_by: tuple[int, ...] = ()  # model version ids: studies none of these has read
    received_from: datetime | None = None  # last instance received at or after (UTC)
    received_before: datetime | None = None  # ... and before (UTC)
    states: tuple[str, ...] = tuple(FINISHED)
    study_uids: tuple[str, ...] = ()  # empty: any study

    def __post_init__(self) -> None:
        unknown = set(self.states) - {str(s) for s in FINISHED}
        if unknown:
            raise ValueError(f"states must be finished states {[str(s) for s in FINISHED]}, "
                             f"got {sorted(unknown)}")


def _read_by(model_ids: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """A study was read by a model when it is the study's current result or when any of its
    images has a stored result from that model (old results are kept beside new ones)."""
    has_result = exists().where(and_(InferenceResult.instance_id == Instance.id,
                                     Instance.study_id == Study.id,
                                     InferenceResult.model_version_id.in_(model_ids)))
    current = and_(Study.model_version_id.is_not(None), Study.model_version_id.in_(model_ids))
    return or_(current, has_result)  # never NULL, so that NOT(...) keeps unread studies


def select_for_reprocessing(session: Session, selection: ReprocessSelection) -> list[str]:
    """Study UIDs matching the selection, most recently received first."""
    # A purged study's images are gone (retention): reading it again would replace its real SR
    # with "not analysed".
    query = select(Study.study_uid).where(Study.state.in_(selection.states), Study.purged_at.is_(None))
    if selection.not_read_by:
        query = query.where(~_read_by(selection.not_read_by))
    if selection.received_from is not None:
        query = query.where(Study.last_received_at >= selection.received_from)
    if selection.received_before is not None:
        query = query.where(Study.last_received_at < selection.received_before)
    if selection.study_uids:
        query = query.where(Study.study_uid.in_(selection.study_uids))
    return list(session.scalars(query.order_by(Study.last_received_at.desc(), Study.id.desc())).all())


def requeue_finished(session: Session, study_uid: str, states: tuple[str, ...], reason: str) -> bool:
    """Put one finished study back to queued (a fresh run: attempts start again), marked as bulk
    work that live studies go before. False when it is no longer in one of `states` (new images
    arrived, or someone else requeued it)."""
    result = session.execute(update(Study).where(Study.study_uid == study_uid, Study.state.in_(states),
                                                 Study.purged_at.is_(None))
                             .values(state=StudyState.QUEUED, queued_at=utcnow(), attempts=0,
                                     reason=reason, bulk=True))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def count_in_flight(session: Session) -> int:
    """Studies queued or being processed: live traffic and earlier bulk work not yet done."""
    return int(session.scalar(select(func.count()).select_from(Study).where(
        Study.state.in_([StudyState.QUEUED, StudyState.PROCESSING]))) or 0)


def waiting_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Study.state, func.count()).where(Study.state.in_(WAITING_STATES))
                           .group_by(Study.state)).all()
    counts = {str(state): 0 for state in WAITING_STATES}
    counts.update({str(state): int(n) for state, n in rows})
    return counts


def pending_exports(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(SrExport).where(
        SrExport.state == ExportState.PENDING)) or 0)


def model_ids(session: Session, version: str, name: str | None = None) -> tuple[int, ...]:
    query = select(ModelVersion.id).where(ModelVersion.version == version)
    if name:
        query = query.where(ModelVersion.name == name)
    return tuple(session.scalars(query).all())


def model_summaries(session: Session) -> list[dict[str, Any]]:
    """Every model version the database knows, with its threshold and how much it has read."""
    rows = []
    for model in session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all():
        result_studies = select(Instance.study_id).join(
            InferenceResult, InferenceResult.instance_id == Instance.id).where(
            InferenceResult.model_version_id == model.id)
        studies_read = session.scalar(select(func.count()).select_from(Study).where(
            or_(Study.model_version_id == model.id, Study.id.in_(result_studies))))
        images = session.scalar(select(func.count()).select_from(InferenceResult).where(
            InferenceResult.model_version_id == model.id))
        current = session.scalar(select(func.count()).select_from(Study).where(
            Study.model_version_id == model.id))
        manifest = model.manifest or {}
        rows.append({"id": model.id, "name": model.name, "version": model.version,
                     "weights_sha256": model.weights_sha256, "device_uid": model.device_uid,
                     "flag_label": manifest.get("flag_label"), "threshold": manifest.get("threshold"),
                     "studies_read": int(studies_read or 0), "images_read": int(images or 0),
                     "current_result_of": int(current or 0), "registered_at": model.registered_at})
    return rows


def claim_run(session: Session, job: str, run_key: str, holder: str) -> int | None:
    """Take the lock for one run of a job: the run id, or None when another scheduler has
    already taken (or finished) this run. Relies on the unique (job, run_key) constraint, which
    PostgreSQL and SQLite both enforce atomically."""
    savepoint = session.begin_nested()
    try:
        run = SchedulerRun(job=job, run_key=run_key, holder=holder[:128], studies=0, outcome="running")
        session.add(run)
        session.flush()
    except IntegrityError:
        savepoint.rollback()
        return None
    savepoint.commit()
    return run.id


def finish_run(session: Session, run_id: int, studies: int, outcome: str) -> None:
    session.execute(update(SchedulerRun).where(SchedulerRun.id == run_id)
                    .values(finished_at=utcnow(), studies=studies, outcome=outcome))


@dataclass(frozen=True)
class StudyTiming:
    state: str
    last_received_at: datetime | None
    finished_at: datetime | None
    model_name: str | None
    model_version: str | None
    images_classified: int
    first_reading: bool  # False for a reprocessed study, whose received time is long past


def study_timing(session: Session, study_uid: str, results_since: datetime) -> StudyTiming | None:
    """What the worker metrics need about a study that was just processed."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    model = session.get(ModelVersion, study.model_version_id) if study.model_version_id else None
    images = 0
    if model is not None:
        images = int(session.scalar(select(func.count()).select_from(InferenceResult).join(
            Instance, InferenceResult.instance_id == Instance.id).where(
            Instance.study_id == study.id, InferenceResult.model_version_id == model.id,
            InferenceResult.created_at >= results_since)) or 0)
    reports = int(session.scalar(select(func.count()).select_from(SrExport).where(
        SrExport.study_id == study.id, SrExport.kind.in_(SR_KINDS))) or 0)
    return StudyTiming(str(study.state), as_utc(study.last_received_at), as_utc(study.finished_at),
                       model.name if model else None, model.version if model else None, images,
                       reports <= 1)


@dataclass(frozen=True)
class ExportTiming:
    state: str
    sent_at: datetime | None
    last_received_at: datetime | None
    first_report: bool  # the study's first SR (not a heatmap, not a superseding SR)


def export_timing(session: Session, export_id: int) -> ExportTiming | None:
    """An export's state, when it was sent and when its study's last instance arrived."""
    row = session.get(SrExport, export_id)
    if row is None:
        return None
    study = session.get(Study, row.study_id)
    first = session.scalar(select(func.min(SrExport.id)).where(SrExport.study_id == row.study_id,
                                                               SrExport.kind.in_(SR_KINDS)))
    return ExportTiming(str(row.state), as_utc(row.sent_at),
                        as_utc(study.last_received_at) if study else None, first == row.id)
