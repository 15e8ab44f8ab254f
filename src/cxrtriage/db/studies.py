"""Study lifecycle: received -> queued -> processing -> done | skipped | failed.

Every transition is a conditional UPDATE, so two processes can never both win the same step.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from cxrtriage.db.models import (
    Association,
    Instance,
    Series,
    SrExport,
    Study,
    StudyAssociation,
    as_utc,
    utcnow,
)
from cxrtriage.domain import SR_KINDS, Claim, InstanceRef, InstanceState, Reason, SeriesState, StudyState

# An association open longer than this no longer holds its studies back (a peer that never
# closes, or keeps one alive with C-ECHOs); later instances take the late-instance path.
DEFAULT_MAX_HOLD_SECONDS = 3600.0


def _has_open_association(now: datetime, max_hold_seconds: float):  # type: ignore[no-untyped-def]
    return exists().where(and_(StudyAssociation.study_id == Study.id,
                               StudyAssociation.association_id == Association.id,
                               Association.closed_at.is_(None),
                               Association.opened_at > now - timedelta(seconds=max_hold_seconds)))


def queue_quiet_studies(session: Session, quiet_seconds: float, now: datetime | None = None,
                        max_hold_seconds: float = DEFAULT_MAX_HOLD_SECONDS) -> list[str]:
    """Move studies that have been quiet long enough, with no sending association still open
    (for less than `max_hold_seconds`), from received to queued. Returns the study UIDs to
    dispatch; each is returned once."""
    now = now or utcnow()
    candidates = session.execute(
        select(Study.id, Study.study_uid, Study.revision).where(
            Study.state == StudyState.RECEIVED,
            Study.last_received_at <= now - timedelta(seconds=quiet_seconds),
            ~_has_open_association(now, max_hold_seconds))).all()
    queued = []
    for study_id, study_uid, revision in candidates:
        result = session.execute(update(Study).where(
            Study.id == study_id, Study.state == StudyState.RECEIVED, Study.revision == revision)
            .values(state=StudyState.QUEUED, queued_at=now, attempts=0))  # a fresh run
        if result.rowcount:  # type: ignore[attr-defined]
            queued.append(study_uid)
    return queued


def next_quiet_at(session: Session, quiet_seconds: float,
                  max_hold_seconds: float = DEFAULT_MAX_HOLD_SECONDS) -> datetime | None:
    """When the next received study with no sending association open becomes quiet; None when
    there is none (a study still being sent is woken by its association's close)."""
    last = session.scalar(select(func.min(Study.last_received_at)).where(
        Study.state == StudyState.RECEIVED, ~_has_open_association(utcnow(), max_hold_seconds)))
    return as_utc(last) + timedelta(seconds=quiet_seconds) if last is not None else None


def requeue_abandoned(session: Session, redispatch_seconds: float, now: datetime | None = None) -> list[str]:
    """Studies whose worker died (lease expired) or whose queue message was lost go back to
    queued, to be dispatched again. The database, not the broker, decides what is pending."""
    now = now or utcnow()
    expired = session.scalars(select(Study.study_uid).where(
        Study.state == StudyState.PROCESSING, Study.lease_expires_at < now)).all()
    if expired:
        session.execute(update(Study).where(Study.study_uid.in_(expired),
                                            Study.state == StudyState.PROCESSING,
                                            Study.lease_expires_at < now)
                        .values(state=StudyState.QUEUED, queued_at=now,
                                reason="worker stopped while processing; redone"))
    stale = session.scalars(select(Study.study_uid).where(
        Study.state == StudyState.QUEUED,
        Study.queued_at < now - timedelta(seconds=redispatch_seconds))).all()
    if stale:
        session.execute(update(Study).where(Study.study_uid.in_(stale)).values(queued_at=now))
    return list(expired) + list(stale)


def claim_study(session: Session, study_uid: str, lease_seconds: float, max_attempts: int) -> Claim | None:
    """Take a queued study for processing. None when another worker has it or it is not queued.

    The attempt limit holds here, whoever dispatched the study: a claim past `max_attempts` is
    marked exhausted, and the worker reports "not analysed" instead of reading the study again.
    The study's earlier SRs are read in the same session, so the new SR knows what it supersedes.
    """
    now = utcnow()
    result = session.execute(update(Study).where(Study.study_uid == study_uid,
                                                 Study.state == StudyState.QUEUED)
                             .values(state=StudyState.PROCESSING, lease_expires_at=now +
                                     timedelta(seconds=lease_seconds), attempts=Study.attempts + 1,
                                     claimed_revision=Study.revision))
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    exports = session.execute(select(SrExport.sr_sop_instance_uid, SrExport.path)
                              .where(SrExport.study_id == study.id, SrExport.kind.in_(SR_KINDS))
                              .order_by(SrExport.id)).all()
    previous_uid, previous_path = exports[-1] if exports else (None, None)
    instances = tuple(InstanceRef(i.id, i.sop_instance_uid, i.sop_class_uid, i.path, i.sha256)
                      for i in study_instances(session, study.id))
    return Claim(study.id, study.study_uid, int(study.claimed_revision or 0), study.attempts,
                 study.attempts > max_attempts, instances, previous_uid, previous_path,
                 frozenset(uid for uid, _ in exports))


def ready_studies(session: Session, limit: int) -> list[str]:
    """Queued studies, live ones first, then bulk reprocessing; longest waiting first within
    each: what a worker may claim to fill a batch."""
    return list(session.scalars(select(Study.study_uid).where(Study.state == StudyState.QUEUED)
                                .order_by(Study.bulk, Study.queued_at, Study.id).limit(limit)).all())


def release_claim(session: Session, study_id: int, attempt: int) -> bool:
    """Give a claim back to the queue at once (its attempt still counts), after a failure that
    left no result, so the study is redone without waiting for its lease to run out."""
    result = session.execute(update(Study).where(
        Study.id == study_id, Study.state == StudyState.PROCESSING, Study.attempts == attempt)
        .values(state=StudyState.QUEUED, queued_at=utcnow(), lease_expires_at=None))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def extend_lease(session: Session, study_id: int, attempt: int, lease_seconds: float) -> bool:
    """Heartbeat of a working worker. False when the claim was lost (the lease had expired)."""
    result = session.execute(update(Study).where(
        Study.id == study_id, Study.state == StudyState.PROCESSING, Study.attempts == attempt)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_study(session: Session, study_id: int, claimed_revision: int, attempt: int,
                 state: StudyState, reason: Reason | None, flagged: bool | None,
                 model_version_id: int | None) -> bool:
    """Record the outcome if this claim (attempt) still holds and no new instance arrived
    meanwhile; otherwise the study is, or will be, processed again. Returns whether recorded."""
    result = session.execute(update(Study).where(
        Study.id == study_id, Study.state == StudyState.PROCESSING, Study.attempts == attempt,
        Study.revision == claimed_revision)
        .values(state=state, reason=reason.text if reason else "", reason_code=reason or "",
                flagged=flagged, model_version_id=model_version_id, finished_at=utcnow(),
                lease_expires_at=None))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def study_instances(session: Session, study_id: int) -> list[Instance]:
    return list(session.scalars(select(Instance).where(Instance.study_id == study_id)
                                .order_by(Instance.id)).all())


def record_instance_outcomes(session: Session, outcomes: dict[int, tuple[InstanceState, str]]) -> None:
    """Each image's state and reason (by instance id), recorded with its study's result, so the
    worker need not handle the rows itself (an instance removed meanwhile is left alone)."""
    for instance_id, (state, reason) in outcomes.items():
        row = session.get(Instance, instance_id)
        if row is not None:
            row.state, row.reason = state, reason


def update_series_states(session: Session, study_id: int) -> None:
    """A series is classified if any of its images was, else it takes its images' common state."""
    for series in session.scalars(select(Series).where(Series.study_id == study_id)).all():
        states = {i.state for i in series.instances}
        reasons = sorted({i.reason for i in series.instances if i.reason})
        if InstanceState.CLASSIFIED in states:
            series.state = SeriesState.CLASSIFIED
        else:
            series.state = SeriesState(states.pop()) if len(states) == 1 else SeriesState.MIXED
        series.reason = "; ".join(reasons)[:2000]
