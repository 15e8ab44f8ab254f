"""Tables. The database is the source of truth for every study's state; the queue only dispatches."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cxrtriage.domain import ExportKind, ExportState, InstanceState, SeriesState, StudyState, TrialState


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything this program stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def state_type(states: type[enum.StrEnum]) -> Enum:
    """A state column typed by its enum and stored as the enum's value in a VARCHAR(16), as the
    migrations made it: no native enum type and no CHECK constraint, so the schema is unchanged."""
    return Enum(states, native_enum=False, create_constraint=False, length=16,
                values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[StudyState] = mapped_column(state_type(StudyState), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    reason_code: Mapped[str] = mapped_column(String(32), default="")  # a domain.Reason, or ""
    revision: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every new instance
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    claimed_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(nullable=True)  # image files removed (retention)
    # Requeued by bulk reprocessing: a batch takes live studies first. New images make it live.
    bulk: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[SeriesState] = mapped_column(state_type(SeriesState), default=SeriesState.RECEIVED)
    reason: Mapped[str] = mapped_column(Text, default="")
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), default="")  # of the stored file
    patient_id: Mapped[str | None] = mapped_column(Text, nullable=True)  # as received
    state: Mapped[InstanceState] = mapped_column(state_type(InstanceState), default=InstanceState.STORED)
    reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[Series] = relationship(back_populates="instances")


class Association(Base):
    """Open associations hold a study back from being queued until they close."""

    __tablename__ = "associations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    receiver_id: Mapped[str] = mapped_column(String(128), default="", index=True)  # which receiver owns it
    last_seen_at: Mapped[datetime | None] = mapped_column(nullable=True)  # owner's liveness heartbeat


class StudyAssociation(Base):
    __tablename__ = "study_associations"
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    association_id: Mapped[str] = mapped_column(ForeignKey("associations.id"), primary_key=True)


class Rejection(Base):
    """An instance refused at C-STORE: the status sent and a reason a person can read."""

    __tablename__ = "rejections"
    id: Mapped[int] = mapped_column(primary_key=True)
    association_id: Mapped[str] = mapped_column(String(32))
    calling_ae: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    quarantine_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the payload was removed by quarantine retention (quarantine_path is then cleared)
    quarantine_removed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    # The identity of a model version: it changes with the weights and with the operating point
    # (threshold, temperature), which a new version may change alone.
    device_uid: Mapped[str] = mapped_column(String(64), unique=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class InferenceResult(Base):
    __tablename__ = "inference_results"
    __table_args__ = (UniqueConstraint("instance_id", "model_version_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    flag_label: Mapped[str] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    preprocessing_version: Mapped[str] = mapped_column(String(16))
    warnings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SrExport(Base):
    __tablename__ = "sr_exports"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    sr_series_uid: Mapped[str] = mapped_column(String(64))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    supersedes_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[ExportKind] = mapped_column(state_type(ExportKind))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[ExportState] = mapped_column(state_type(ExportState), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retry_since: Mapped[datetime | None] = mapped_column(nullable=True)  # start of the retry horizon
    claimed_until: Mapped[datetime | None] = mapped_column(nullable=True)  # an attempt is in flight
    sends: Mapped[int] = mapped_column(Integer, default=0)  # successful deliveries (re-sends > 1)
    # The instance a heat map was made from; None for SRs, which read the whole study.
    source_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", name="fk_sr_exports_source_instance_id"), nullable=True)


class SrExportAttempt(Base):
    """One delivery attempt of an SR export, kept for audit: re-sends of a sent SR are recorded."""

    __tablename__ = "sr_export_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("sr_exports.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    resend: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the peer's C-STORE status
    error: Mapped[str] = mapped_column(Text, default="")


# --- review app (issue 9): accounts, sessions, feedback, audit log, study details ---


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))  # radiologist | admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A signed-in browser. Only the token's sha256 is stored, so a database dump signs no one in."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Feedback(Base):
    """A user's current verdict on a study's result (the study as read by one model version)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("study_id", "model_version_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    verdict: Mapped[str] = mapped_column(String(16))  # agree | disagree | uncertain
    comment: Mapped[str] = mapped_column(Text, default="")
    flagged: Mapped[bool] = mapped_column(Boolean)  # the result's flag when the verdict was given
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Append-only (database triggers refuse UPDATE and DELETE): who did what, when. UIDs only."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str] = mapped_column(String(64), default="")


class StudyDetails(Base):
    """What a radiologist needs to find the patient, recorded with the study's first instance."""

    __tablename__ = "study_details"
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")


class SchedulerRun(Base):
    """One run of a scheduled job (the nightly reprocessing). The unique (job, run_key) pair is
    the lock: of several schedulers, the one whose insert succeeds runs the job; the others skip."""

    __tablename__ = "scheduler_runs"
    __table_args__ = (UniqueConstraint("job", "run_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    run_key: Mapped[str] = mapped_column(String(64))  # e.g. the local date of a nightly run
    holder: Mapped[str] = mapped_column(String(128))  # host:pid of the scheduler that ran it
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    studies: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(32), default="running")


class Trial(Base):
    """A "try an image" request (review app): the app records it, a worker classifies the upload
    and writes the answer into the same row. No patient data: no file name, header value or
    picture; the upload lies in the storage folder's `trials/` spool under a random name until
    the worker has read it."""

    __tablename__ = "trials"
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)  # the public id, random
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # dicom | picture
    spool_path: Mapped[str] = mapped_column(Text, default="")  # "" once the worker removed the upload
    state: Mapped[TrialState] = mapped_column(state_type(TrialState), default=TrialState.PENDING, index=True)
    error: Mapped[str] = mapped_column(Text, default="")  # why it failed (the file's reason, never values)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)  # probabilities, flag, model, note
    cam_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the map, 8-bit gray
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
