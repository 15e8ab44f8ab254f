"""What the receiver writes: associations, stored instances and refusals."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cxrtriage.db.models import (
    Association,
    Instance,
    Rejection,
    Series,
    Study,
    StudyAssociation,
    utcnow,
)
from cxrtriage.domain import InstanceState, StudyState


def open_association(session: Session, association_id: str, calling_ae: str, peer: str,
                     receiver_id: str = "") -> None:
    session.add(Association(id=association_id, calling_ae=calling_ae[:16], peer=peer[:64],
                            receiver_id=receiver_id[:128], last_seen_at=utcnow()))


def close_association(session: Session, association_id: str) -> None:
    session.execute(update(Association).where(Association.id == association_id,
                                              Association.closed_at.is_(None)).values(closed_at=utcnow()))


def touch_associations(session: Session, association_ids: list[str]) -> None:
    """The owning receiver's heartbeat: these associations are still alive."""
    if association_ids:
        session.execute(update(Association).where(Association.id.in_(association_ids),
                                                  Association.closed_at.is_(None))
                        .values(last_seen_at=utcnow()))


def close_stale_associations(session: Session, receiver_id: str) -> int:
    """At receiver start: this receiver's associations left open by its crashed predecessor can no
    longer send. Other receivers sharing the database keep theirs."""
    result = session.execute(update(Association).where(Association.closed_at.is_(None),
                                                       Association.receiver_id == receiver_id[:128])
                             .values(closed_at=utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def expire_associations(session: Session, liveness_seconds: float, now: datetime | None = None) -> int:
    """Close associations whose receiver stopped vouching for them (it died, or its close write
    failed), so that their studies are queued instead of waiting for ever."""
    now = now or utcnow()
    seen = func.coalesce(Association.last_seen_at, Association.opened_at)
    result = session.execute(update(Association).where(
        Association.closed_at.is_(None), seen < now - timedelta(seconds=liveness_seconds))
        .values(closed_at=now).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _get_or_create_study(session: Session, study_uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid).with_for_update())
    if study is None:
        study = Study(study_uid=study_uid, state=StudyState.RECEIVED, revision=0)
        session.add(study)
        session.flush()
    return study


def index_instance(session: Session, *, association_id: str, study_uid: str, series_uid: str,
                   sop_instance_uid: str, sop_class_uid: str, modality: str, transfer_syntax: str,
                   path: str, size_bytes: int) -> None:
    """Record a durably stored instance. A new instance sends a finished or queued study back
    to `received`, so it is queued again once quiet; a re-sent identical instance is a no-op."""
    study = _get_or_create_study(session, study_uid)
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        series = Series(study_id=study.id, series_uid=series_uid, modality=modality[:16])
        session.add(series)
        session.flush()
    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    is_new = instance is None
    if instance is None:
        session.add(Instance(series_id=series.id, study_id=study.id, sop_instance_uid=sop_instance_uid,
                             sop_class_uid=sop_class_uid, transfer_syntax=transfer_syntax, path=path,
                             size_bytes=size_bytes, state=InstanceState.STORED))
    else:
        instance.path, instance.size_bytes, instance.transfer_syntax = path, size_bytes, transfer_syntax
    link = session.get(StudyAssociation, (study.id, association_id))
    if link is None and session.get(Association, association_id) is not None:
        session.add(StudyAssociation(study_id=study.id, association_id=association_id))
    study.last_received_at = utcnow()
    if is_new or study.state in (StudyState.FAILED,):
        study.revision += 1
        study.state = StudyState.RECEIVED
        study.reason = ""


def record_rejection(session: Session, *, association_id: str, calling_ae: str, status: int,
                     reason: str, sop_instance_uid: str | None, quarantine_path: str | None) -> None:
    session.add(Rejection(association_id=association_id, calling_ae=calling_ae[:16], status=status,
                          reason=reason, sop_instance_uid=sop_instance_uid,
                          quarantine_path=quarantine_path))
