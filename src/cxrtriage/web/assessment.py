"""With CXRTRIAGE_WEB_ASSESSMENT_SR on, each verdict is also written as an assessment SR that
references the AI result's SR, stored beside the study and exported like every SR (the
scheduler dispatches pending exports to the workers)."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrtriage.config import Settings
from cxrtriage.db.models import AuditEvent, ModelVersion
from cxrtriage.db.results import latest_export, record_export
from cxrtriage.db.review import audit, find_study
from cxrtriage.dicom.assessment_sr import Assessment, build_assessment
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import ExportKind

logger = logging.getLogger(__name__)
KIND = ExportKind.ASSESSMENT


def record_assessment(session: Session, settings: Settings, study_uid: str, username: str, verdict: str,
                      comment: str, client: str = "") -> str | None:
    """Write and queue the assessment SR of a verdict just given. Returns its SOP Instance UID, or
    None when the result has no stored AI SR to reference."""
    study = find_study(session, study_uid)
    if study is None or study.model_version_id is None:
        return None
    export = latest_export(session, study.id)
    if (export is None or export.model_version_id != study.model_version_id
            or not Path(export.path).is_file()):
        logger.warning("no stored AI SR to reference; assessment SR not written",
                       extra={"study_uid": study_uid})
        return None
    version = session.get(ModelVersion, study.model_version_id)
    sequence = int(session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "feedback", AuditEvent.study_uid == study_uid,
        AuditEvent.username == username)) or 1)
    sr = build_assessment(Assessment(
        verdict=verdict, comment=comment, observer=username,
        model=f"{version.name} {version.version}" if version else "", sequence=sequence,
        ai_sr=dcmread(export.path, stop_before_pixels=True)))
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    path = InstanceStore(settings.storage_dir).store(study_uid, str(sr.SeriesInstanceUID),
                                                     str(sr.SOPInstanceUID), [buffer.getvalue()])
    record_export(session, study_id=study.id, model_version_id=study.model_version_id,
                  series_uid=str(sr.SeriesInstanceUID), sop_uid=str(sr.SOPInstanceUID),
                  supersedes_uid=None, kind=KIND, path=str(path), destination=settings.sr_destination)
    audit(session, "assessment_sr", username, study_uid, client, sop_instance_uid=str(sr.SOPInstanceUID),
          assessed_sr=export.sr_sop_instance_uid, verdict=verdict)
    return str(sr.SOPInstanceUID)
