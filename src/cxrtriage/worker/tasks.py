"""Tasks are thin wrappers over plain functions; their arguments are ids and UIDs only."""

from __future__ import annotations

import logging

from cxrtriage.worker import export
from cxrtriage.worker.app import app
from cxrtriage.worker.dispatch import dispatch_study_exports
from cxrtriage.worker.runtime import runtime

logger = logging.getLogger(__name__)


@app.task(name="cxrtriage.process_study")
def process_study(study_uid: str) -> dict[str, str | None]:
    """The study and whatever else is ready (see worker/processing.py); states by study UID."""
    from cxrtriage.worker import processing  # torch: loaded only by workers that classify

    rt = runtime()
    states = processing.process_ready(rt, study_uid)
    for uid, state in states.items():
        if state is None:
            continue
        try:
            dispatch_study_exports(rt.db, rt.settings, uid)
        except Exception:  # the broker is away: the scheduler dispatches them once it is back
            logger.warning("SR export not dispatched; the scheduler will", extra={"study_uid": uid})
    return dict(states)


@app.task(name="cxrtriage.export_sr")
def export_sr(export_ids: list[int] | int) -> list[str]:
    # One id: a message queued by a version before exports were sent together.
    return export.export_srs(runtime(), export_ids if isinstance(export_ids, list) else [export_ids])
