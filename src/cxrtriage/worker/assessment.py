"""A radiologist's verdict as an assessment SR (CXRTRIAGE_WEB_ASSESSMENT_SR), written by a worker:
the review app records the verdict and queues its audit event's id; this builds the SR that
references the study's current AI SR (dicom/assessment_sr.py), stores it beside the study,
records its export and an `assessment_sr` audit event, and dispatches the export.

Written once per verdict: the SR's UIDs derive from the AI SR, the user and the verdict's place
among that user's verdicts on the study, so a redelivered message finds it recorded already.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError

from cxrtriage.db.assessments import NoAiSr, assessment_recorded, assessment_source, record_assessment
from cxrtriage.dicom.assessment_sr import Assessment, build_assessment
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.errors import InvalidInputError

if TYPE_CHECKING:
    from cxrtriage.worker.dispatch import Dispatcher
    from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def write_assessment(rt: Runtime, dispatcher: Dispatcher, event_id: int) -> str | None:
    """The assessment SR of the verdict recorded as audit event `event_id`; returns its SOP
    Instance UID, or None when there is nothing to reference (no stored AI SR of the current
    result, or the verdict or its study is gone)."""
    with rt.db.session() as session:
        try:
            source = assessment_source(session, event_id)
        except NoAiSr:
            source = None
    if source is None or not Path(source.ai_sr_path).is_file():
        logger.warning("no stored AI SR to reference; assessment SR not written",
                       extra={"event_id": event_id})
        return None
    try:
        ai_sr = read_dataset(source.ai_sr_path, stop_before_pixels=True)
    except InvalidInputError:
        logger.warning("the AI SR cannot be read; assessment SR not written", extra={"event_id": event_id})
        return None
    sr = build_assessment(Assessment(verdict=source.verdict, comment=source.comment, observer=source.username,
                                     model=source.model, sequence=source.sequence, ai_sr=ai_sr))
    series_uid, sop_uid = str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)
    with rt.db.session() as session:
        if assessment_recorded(session, sop_uid):
            return sop_uid
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    path = rt.store.store(source.study_uid, series_uid, sop_uid, [buffer.getvalue()])
    with rt.db.session() as session:
        record_assessment(session, source, series_uid, sop_uid, str(path), rt.settings.sr_destination)
    logger.info("assessment SR written", extra={"study_uid": source.study_uid, "sop_instance_uid": sop_uid})
    if rt.settings.sr_destination:
        try:
            dispatcher.study_exports(rt.db, rt.settings, source.study_uid)
        except (OperationalError, OSError):  # the broker is away: the scheduler's sweep sends it
            logger.warning("assessment SR export not dispatched; the scheduler will",
                           extra={"study_uid": source.study_uid})
    return sop_uid
