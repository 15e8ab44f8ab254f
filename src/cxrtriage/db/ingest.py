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
    StudyDetails,
    utcnow,
)
from cxrtriage.domain import InstanceState, RefusedInstance, StoredInstance, StudyState
from cxrtriage.errors import InstanceConflictError


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


def _indexed(session: Session, stored: StoredInstance) -> Instance | None:
    """The row already indexed under this SOP Instance UID, if any, read once for both the
    conflict check and the update. Raises InstanceConflictError when it belongs to another
    study or another patient. The row is locked (PostgreSQL), so the answer holds until this
    transaction ends."""
    row = session.execute(select(Instance, Study.study_uid)
                          .join(Study, Study.id == Instance.study_id)
                          .where(Instance.sop_instance_uid == stored.sop_instance_uid)
                          .with_for_update(of=Instance)).first()
    if row is None:
        return None
    instance, stored_study = row
    if stored_study != stored.study_uid or (instance.patient_id is not None
                                            and instance.patient_id != stored.patient_id):
        raise InstanceConflictError()
    return instance


def index_instance(session: Session, stored: StoredInstance) -> str | None:
    """Record an instance the receiver is about to move into place; the caller flushes, moves
    the file, and commits. Returns the path of the file this entry replaces, if any.

    A new instance, or new content under a known SOP Instance UID of the same study and patient
    (corrected demographics, say), sends the study back to `received`, so it is read again once
    quiet. The same file sent again is a no-op. A SOP Instance UID already stored under another
    study or patient raises InstanceConflictError and changes nothing. Two transactions racing
    for a new UID meet at its unique constraint: the loser's flush fails and, retried, it sees
    the winner's row and conflicts here.
    """
    instance = _indexed(session, stored)
    study = _get_or_create_study(session, stored.study_uid)
    # A purged study that receives again is no longer purged: retention may remove its files
    # later, and reprocessing reads it. An explicit UPDATE, since on SQLite the ORM's read of
    # the row can predate this transaction's write lock.
    session.execute(update(Study).where(Study.id == study.id, Study.purged_at.is_not(None))
                    .values(purged_at=None).execution_options(synchronize_session=False))
    series = session.scalar(select(Series).where(Series.series_uid == stored.series_uid))
    if series is None:
        series = Series(study_id=study.id, series_uid=stored.series_uid, modality=stored.modality[:16])
        session.add(series)
        session.flush()
    changed, replaced = instance is None, None
    if instance is None:
        session.add(Instance(series_id=series.id, study_id=study.id,
                             sop_instance_uid=stored.sop_instance_uid, sop_class_uid=stored.sop_class_uid,
                             transfer_syntax=stored.transfer_syntax, path=stored.path,
                             size_bytes=stored.size_bytes, sha256=stored.sha256,
                             patient_id=stored.patient_id, state=InstanceState.STORED))
    else:
        changed = instance.sha256 != stored.sha256 or not stored.sha256
        replaced = instance.path if instance.path != stored.path else None
        instance.path, instance.size_bytes = stored.path, stored.size_bytes
        instance.transfer_syntax, instance.sha256 = stored.transfer_syntax, stored.sha256
        instance.patient_id = stored.patient_id
    link = session.get(StudyAssociation, (study.id, stored.association_id))
    if link is None and session.get(Association, stored.association_id) is not None:
        session.add(StudyAssociation(study_id=study.id, association_id=stored.association_id))
    study.last_received_at = utcnow()
    _record_details(session, study, stored)
    if changed or study.state == StudyState.FAILED:
        study.revision += 1
        study.state = StudyState.RECEIVED
        study.reason, study.reason_code = "", ""
        study.bulk = False  # new images: a live study again
    return replaced


def _record_details(session: Session, study: Study, stored: StoredInstance) -> None:
    """The worklist's details from the study's first instance. The study row is locked (or new,
    and a racing creator fails at its unique UID), so two receivers cannot both insert them."""
    if stored.details is None:
        return
    session.flush()  # a new study's id
    if session.get(StudyDetails, study.id) is not None:
        return
    header = stored.details
    session.add(StudyDetails(study_id=study.id, patient_name=header.patient_name[:256],
                             patient_id=header.patient_id[:64],
                             accession_number=header.accession_number[:64],
                             study_date=header.study_date[:16],
                             study_description=header.study_description[:256]))


def record_rejection(session: Session, refused: RefusedInstance) -> None:
    session.add(Rejection(association_id=refused.association_id, calling_ae=refused.calling_ae[:16],
                          status=refused.status, reason=refused.reason,
                          sop_instance_uid=refused.sop_instance_uid,
                          quarantine_path=refused.quarantine_path))
