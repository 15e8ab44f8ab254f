"""SR export delivery state: which exports are due, who is sending one, what each attempt did.

The database drives retries: an export is due when its `next_attempt_at` has passed, the
scheduler dispatches it, and the worker that claims it records the attempt. Nothing depends on
broker ETAs, so a Redis restart or a visibility timeout cannot lose or duplicate a retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from cxrtriage.db.models import SrExport, SrExportAttempt, Study, as_utc, utcnow
from cxrtriage.domain import SR_KINDS, ExportState


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff within a horizon: attempt n waits min(base * 2**(n-1), cap);
    an attempt that fails after the horizon (or at `max_attempts`, when set) fails the export."""

    base_seconds: float = 5.0
    max_interval_seconds: float = 300.0
    horizon_seconds: float = 3 * 86400.0
    max_attempts: int = 0  # 0: no cap

    def delay(self, attempt: int) -> float:
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        return min(self.base_seconds * 2.0 ** min(attempt - 1, 60), self.max_interval_seconds)


@dataclass(frozen=True)
class ClaimedExport:
    """An export taken for one attempt: what to send, where, and the attempt to record."""

    export_id: int
    attempt_id: int
    path: str
    destination: str
    resend: bool  # it was sent before: this attempt re-sends it


@dataclass(frozen=True)
class AttemptOutcome:
    """An export's state once an attempt is recorded."""

    export_id: int
    state: ExportState
    attempts: int


def _earlier_sr_pending():  # type: ignore[no-untyped-def]
    """An earlier SR of the same study still waiting: a superseding SR must not overtake it."""
    earlier = aliased(SrExport)
    return exists().where(and_(earlier.study_id == SrExport.study_id, earlier.id < SrExport.id,
                               earlier.kind.in_(SR_KINDS), earlier.state == ExportState.PENDING))


def due_export_batches(session: Session, hold_seconds: float, now: datetime | None = None,
                       study_uid: str | None = None,
                       export_ids: list[int] | None = None) -> list[list[int]]:
    """Pending exports whose next attempt is due, oldest first, in one batch per study (to go
    out over one association). Each is pushed `hold_seconds` into the future (longer than one
    attempt's deadline), so it is dispatched once per attempt and re-dispatched only if that
    attempt's message or worker was lost. One conditional UPDATE finds and holds them, so the
    rows are not read first. `study_uid` or `export_ids` (the rows the worker has just
    recorded) narrow it."""
    now = now or utcnow()
    statement = update(SrExport).where(
        SrExport.state == ExportState.PENDING, SrExport.next_attempt_at <= now,
        ~(SrExport.kind.in_(SR_KINDS) & _earlier_sr_pending()))
    if study_uid is not None:
        of_study = select(Study.id).where(Study.study_uid == study_uid)
        statement = statement.where(SrExport.study_id.in_(of_study))
    if export_ids is not None:
        statement = statement.where(SrExport.id.in_(export_ids))
    rows = session.execute(statement.values(next_attempt_at=now + timedelta(seconds=hold_seconds))
                           .returning(SrExport.id, SrExport.study_id)
                           .execution_options(synchronize_session=False)).all()
    batches: dict[int, list[int]] = {}
    for export_id, study in sorted(rows):
        batches.setdefault(study, []).append(export_id)
    return list(batches.values())


def claim_export(session: Session, export_id: int, seconds: float) -> ClaimedExport | None:
    """Take a pending export for one attempt; None when it is not pending or another worker is
    sending it. The claim lapses after `seconds`, so a dead worker's export is sent again. The
    claiming UPDATE returns what the attempt needs, so the row is not read again."""
    now = utcnow()
    claimed = session.execute(update(SrExport).where(
        SrExport.id == export_id, SrExport.state == ExportState.PENDING,
        or_(SrExport.claimed_until.is_(None), SrExport.claimed_until < now))
        .values(claimed_until=now + timedelta(seconds=seconds))
        .returning(SrExport.path, SrExport.destination, SrExport.sends)
        .execution_options(synchronize_session=False)).first()
    if claimed is None:
        return None
    attempt = SrExportAttempt(export_id=export_id, started_at=now, resend=bool(claimed.sends), error="")
    session.add(attempt)
    session.flush()
    return ClaimedExport(export_id, attempt.id, claimed.path, claimed.destination, attempt.resend)


def record_attempt(session: Session, attempt_id: int, error: str, status: int | None,
                   policy: RetryPolicy, now: datetime | None = None) -> AttemptOutcome:
    """Finish an attempt: sent, or pending with the next backoff, or failed past the horizon."""
    row = _record_attempt(session, attempt_id, error, status, policy, now)
    return AttemptOutcome(row.id, row.state, row.attempts)


def _record_attempt(session: Session, attempt_id: int, error: str, status: int | None,
                    policy: RetryPolicy, now: datetime | None) -> SrExport:
    now = now or utcnow()
    attempt = session.get(SrExportAttempt, attempt_id)
    if attempt is None:
        raise LookupError(f"no SR export attempt with id {attempt_id}")
    attempt.finished_at, attempt.status, attempt.error = now, status, error
    row = session.get(SrExport, attempt.export_id)
    if row is None:
        raise LookupError(f"no SR export with id {attempt.export_id}")
    row.attempts += 1
    row.claimed_until = None
    since = as_utc(row.retry_since or row.created_at)
    if not error:
        row.state, row.sent_at, row.last_error, row.next_attempt_at = ExportState.SENT, now, "", None
        row.sends += 1
        return row
    next_at = now + timedelta(seconds=policy.delay(row.attempts))
    over_horizon = next_at > since + timedelta(seconds=policy.horizon_seconds)
    capped = policy.max_attempts and row.attempts >= policy.max_attempts
    if over_horizon or capped:
        limit = (f"the retry horizon of {policy.horizon_seconds:.0f} s" if over_horizon
                 else f"CXRTRIAGE_SR_MAX_ATTEMPTS={policy.max_attempts}")
        row.state, row.next_attempt_at = ExportState.FAILED, None
        row.last_error = f"gave up after {row.attempts} attempts ({limit}); last error: {error}"
    else:
        row.last_error, row.next_attempt_at = error, next_at
    return row


def list_exports(session: Session, state: str | None = None, study_uid: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    query = select(SrExport, Study.study_uid).join(Study, Study.id == SrExport.study_id)
    if state:
        query = query.where(SrExport.state == state)
    if study_uid:
        query = query.where(Study.study_uid == study_uid)
    rows = session.execute(query.order_by(SrExport.id.desc()).limit(limit)).all()
    return [{"id": e.id, "study_uid": uid, "kind": e.kind, "sop_instance_uid": e.sr_sop_instance_uid,
             "supersedes_uid": e.supersedes_uid, "state": e.state, "attempts": e.attempts,
             "sends": e.sends, "next_attempt_at": e.next_attempt_at, "sent_at": e.sent_at,
             "destination": e.destination, "last_error": e.last_error, "created_at": e.created_at}
            for e, uid in rows]


def count_by_state(session: Session) -> dict[str, int]:
    return {state: int(n) for state, n in session.execute(
        select(SrExport.state, func.count()).group_by(SrExport.state)).all()}


def retry_exports(session: Session, *, destination: str, study_uid: str | None = None,
                  state: str | None = None, every: bool = False) -> list[int]:
    """Queue exports for sending again, with a fresh retry horizon: a study's exports (any state),
    the exports in one state, or all of them. A sent SR sent again is harmless (same UID, same
    bytes) and is recorded as a re-send. Exports without a destination take `destination`."""
    if not (study_uid or state or every):
        raise ValueError("retry_exports needs study_uid, state or every=True")
    query = select(SrExport)
    if study_uid:
        query = query.join(Study, Study.id == SrExport.study_id).where(Study.study_uid == study_uid)
    if state:
        query = query.where(SrExport.state == state)
    now = utcnow()
    ids = []
    for row in session.scalars(query.order_by(SrExport.id)).all():
        if not row.destination:
            if not destination:
                continue
            row.destination = destination
        row.state, row.attempts, row.retry_since = ExportState.PENDING, 0, now
        row.next_attempt_at, row.claimed_until = now, None
        ids.append(row.id)
    return ids
