""""Try an image" requests: recorded by the review app, answered by a worker (worker/trial.py).

A request is `pending` until a worker writes its answer (`done`) or says why there is none
(`failed`); either way the worker removes the spooled upload and clears `spool_path`. Only the
user who asked may read the answer. Rows older than a day are forgotten (`forget_trials`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cxrtriage.db.models import Trial, utcnow
from cxrtriage.db.review import iso
from cxrtriage.domain import TrialState

PENDING, DONE, FAILED = TrialState.PENDING, TrialState.DONE, TrialState.FAILED
KINDS = ("dicom", "picture")


@dataclass(frozen=True)
class TrialAnswer:
    """What the asking user sees: the state, and the answer or the reason there is none."""

    token: str
    state: str
    error: str
    result: dict[str, Any]
    has_heatmap: bool
    created_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class TrialJob:
    """What the worker needs to answer a request."""

    id: int
    kind: str
    spool_path: str
    state: str


def create_trial(session: Session, token: str, user_id: int, kind: str, spool_path: str) -> int:
    """Record a request whose upload is spooled at `spool_path`; returns its id (the task's
    argument)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    row = Trial(token=token, user_id=user_id, kind=kind, spool_path=spool_path, state=PENDING, result={})
    session.add(row)
    session.flush()
    return int(row.id)


def _answer(row: Trial) -> TrialAnswer:
    return TrialAnswer(row.token, row.state, row.error, dict(row.result or {}), row.cam_png is not None,
                       iso(row.created_at), iso(row.finished_at))


def trial_answer(session: Session, token: str, user_id: int) -> TrialAnswer | None:
    """The request `token` of this user; None for another user's or an unknown one."""
    row = session.scalar(select(Trial).where(Trial.token == token, Trial.user_id == user_id))
    return _answer(row) if row is not None else None


def trial_heatmap(session: Session, token: str, user_id: int) -> tuple[bytes, dict[str, Any]] | None:
    """The stored heat map (PNG) of the user's answered request, and the answer it belongs to."""
    row = session.scalar(select(Trial).where(Trial.token == token, Trial.user_id == user_id,
                                             Trial.state == DONE))
    if row is None or row.cam_png is None:
        return None
    return bytes(row.cam_png), dict(row.result or {})


def trial_job(session: Session, trial_id: int) -> TrialJob | None:
    row = session.get(Trial, trial_id)
    return TrialJob(row.id, row.kind, row.spool_path, row.state) if row is not None else None


def finish_trial(session: Session, trial_id: int, result: dict[str, Any], cam_png: bytes | None) -> bool:
    """Write the answer of a pending request; False when it was answered (or forgotten) already."""
    done = session.execute(update(Trial).where(Trial.id == trial_id, Trial.state == PENDING)
                           .values(state=DONE, result=result, cam_png=cam_png, spool_path="",
                                   finished_at=utcnow()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def fail_trial(session: Session, trial_id: int, error: str) -> bool:
    """Say why a pending request has no answer (`error` names no patient data)."""
    done = session.execute(update(Trial).where(Trial.id == trial_id, Trial.state == PENDING)
                           .values(state=FAILED, error=error[:1000], spool_path="", finished_at=utcnow()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def forget_trials(session: Session, older_than: datetime) -> list[str]:
    """Delete requests made before `older_than`; returns the spool paths of those whose upload was
    never read (their worker was away), for the caller to remove."""
    rows = session.execute(delete(Trial).where(Trial.created_at < older_than)
                           .returning(Trial.spool_path).execution_options(synchronize_session=False)).all()
    return [str(path) for (path,) in rows if path]
