"""Studies stored and indexed as the receiver leaves them, and the SRs the worker then wrote."""

from __future__ import annotations

import hashlib
from io import BytesIO

import pydicom
from sqlalchemy import select

from cxrtriage.db import ingest
from cxrtriage.db.models import SrExport, Study
from cxrtriage.db.studies import queue_quiet_studies
from cxrtriage.domain import SR_KINDS, StoredInstance
from cxrtriage.worker.runtime import Runtime


def receive(rt: Runtime, datasets: list[pydicom.Dataset]) -> str:
    """Store and index the files as the receiver would, then queue the study."""
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        path = rt.store.store(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                              [data])
        with rt.db.session() as session:
            ingest.index_instance(session, StoredInstance(
                "test", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                str(ds.SOPClassUID), str(ds.Modality), "1.2.840.10008.1.2.1", str(path), len(data),
                hashlib.sha256(data).hexdigest(), str(ds.get("PatientID", ""))))
    requeue(rt)
    return str(datasets[0].StudyInstanceUID)


def requeue(rt: Runtime) -> None:
    from datetime import timedelta

    from cxrtriage.db.models import utcnow

    with rt.db.session() as session:
        queue_quiet_studies(session, 0, now=utcnow() + timedelta(seconds=1))


def srs(rt: Runtime, study_uid: str) -> list[SrExport]:
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        rows = session.scalars(select(SrExport).where(SrExport.study_id == study.id,
                                                      SrExport.kind.in_(SR_KINDS))
                               .order_by(SrExport.id)).all()
        session.expunge_all()
        return list(rows)


def current(rows: list[SrExport]) -> list[SrExport]:
    superseded = {r.supersedes_uid for r in rows}
    return [r for r in rows if r.sr_sop_instance_uid not in superseded]
