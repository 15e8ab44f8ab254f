"""Tasks are thin wrappers over plain functions; their arguments are ids and UIDs only. They
register with every app that `configure_app` makes, and take their resources from it."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from cxrtriage.worker import assessment, export
from cxrtriage.worker.app import EXPORT_SR_TASK, PROCESS_STUDY_TASK
from cxrtriage.worker.dispatch import CLASSIFY_TRIAL_TASK, WRITE_ASSESSMENT_TASK, Dispatcher

logger = logging.getLogger(__name__)


@shared_task(name=PROCESS_STUDY_TASK, bind=True)
def process_study(self: Any, study_uid: str) -> dict[str, str | None]:
    """The study and whatever else is ready (see worker/processing.py); states by study UID."""
    from cxrtriage.worker import processing  # torch: loaded only by workers that classify

    rt = self.app.runtime()
    states = processing.process_ready(rt, study_uid)
    dispatcher = Dispatcher(self.app)
    for uid, state in states.items():
        if state is None:
            continue
        try:
            dispatcher.study_exports(rt.db, rt.settings, uid)
        except Exception:  # the broker is away: the scheduler dispatches them once it is back
            logger.warning("SR export not dispatched; the scheduler will", extra={"study_uid": uid})
    return dict(states)


@shared_task(name=EXPORT_SR_TASK, bind=True)
def export_sr(self: Any, export_ids: list[int] | int) -> list[str]:
    # One id: a message queued by a version before exports were sent together.
    return export.export_srs(self.app.runtime(), export_ids if isinstance(export_ids, list) else [export_ids])


@shared_task(name=CLASSIFY_TRIAL_TASK, bind=True)
def classify_trial(self: Any, trial_id: int) -> str:
    """The review app's "try an image" request (see worker/trial.py); its state afterwards."""
    from cxrtriage.worker import trial  # torch: loaded only by workers that classify

    return trial.classify_trial(self.app.runtime(), trial_id)


@shared_task(name=WRITE_ASSESSMENT_TASK, bind=True)
def write_assessment(self: Any, feedback_event_id: int) -> str | None:
    """A verdict's assessment SR (see worker/assessment.py); its SOP Instance UID, if written."""
    return assessment.write_assessment(self.app.runtime(), Dispatcher(self.app), feedback_event_id)
