"""Tasks are thin wrappers over plain functions; their arguments are ids and UIDs only. They
register with every app that `configure_app` makes, and take their resources from it."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from cxrtriage.worker import export
from cxrtriage.worker.app import EXPORT_SR_TASK, PROCESS_STUDY_TASK
from cxrtriage.worker.dispatch import Dispatcher

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
