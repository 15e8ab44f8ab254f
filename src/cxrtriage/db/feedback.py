"""Radiologists' verdicts on a study's current result: each user's current one (a row that a new
verdict replaces) and the history (the audit log's `feedback` events, which nothing replaces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrtriage.db.models import Feedback, ModelVersion, Study, User, utcnow
from cxrtriage.db.review import VERDICTS, audit_event, audit_events, iso


class NoResultError(LookupError):
    """The study is unknown, or has no result to give feedback on."""


@dataclass(frozen=True)
class FeedbackGiven:
    first: bool  # the user's first verdict on this result (False: it replaced an earlier one)
    event_id: int  # the audit event that records it (what an assessment SR is written from)


def study_feedback(session: Session, study_id: int, model_version_id: int | None) -> list[dict[str, Any]]:
    """Every user's current verdict on the study's result by `model_version_id`."""
    rows = session.execute(select(Feedback, User.username).join(User, User.id == Feedback.user_id)
                           .where(Feedback.study_id == study_id,
                                  Feedback.model_version_id == model_version_id)
                           .order_by(Feedback.updated_at)).all()
    return [{"username": name, "verdict": fb.verdict, "comment": fb.comment,
             "updated_at": iso(fb.updated_at)} for fb, name in rows]


def give_feedback(session: Session, study_uid: str, user_id: int, username: str, verdict: str,
                  comment: str, client: str = "") -> FeedbackGiven:
    """Record the user's verdict on the study's current result; the audit log keeps the history.
    Raises ValueError for a verdict not in VERDICTS, NoResultError for a study without a result."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None or study.model_version_id is None or study.flagged is None:
        raise NoResultError(f"study {study_uid} is unknown or has no result yet")
    if session.get(User, user_id) is None:
        raise NoResultError("the user giving feedback no longer exists")
    row = session.scalar(select(Feedback).where(Feedback.study_id == study.id,
                                                Feedback.model_version_id == study.model_version_id,
                                                Feedback.user_id == user_id))
    previous = row.verdict if row else None
    if row is None:
        session.add(Feedback(study_id=study.id, model_version_id=study.model_version_id, user_id=user_id,
                             verdict=verdict, comment=comment[:4000], flagged=bool(study.flagged)))
    else:
        row.verdict, row.comment, row.updated_at = verdict, comment[:4000], utcnow()
        row.flagged = bool(study.flagged)
    version = session.get(ModelVersion, study.model_version_id)
    event_id = audit_event(session, "feedback", username, study_uid, client, verdict=verdict,
                           comment=comment[:4000], replaces=previous,
                           model_version=version.version if version else None, flagged=bool(study.flagged))
    return FeedbackGiven(first=row is None, event_id=event_id)


def feedback_history(session: Session, study_uid: str) -> list[dict[str, Any]]:
    return list(reversed(audit_events(session, limit=1000, action="feedback", study_uid=study_uid)))
