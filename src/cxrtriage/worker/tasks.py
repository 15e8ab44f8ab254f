"""Tasks are one-liners over plain functions; their arguments are ids and UIDs only."""

from __future__ import annotations

from cxrtriage.worker import export, pipeline
from cxrtriage.worker.app import app
from cxrtriage.worker.runtime import runtime


@app.task(name="cxrtriage.process_study")
def process_study(study_uid: str) -> str | None:
    return pipeline.process_study(runtime(), study_uid)


@app.task(name="cxrtriage.export_sr")
def export_sr(export_id: int) -> str:
    return export.export_sr(runtime(), export_id)
