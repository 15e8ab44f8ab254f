"""Retention removes finished studies' image files after N days, keeps SRs and results, never
touches pending studies, and marks purged studies so that reprocessing skips them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.models import Instance, Series, SrExport, Study, utcnow
from cxrtriage.db.operations import ReprocessSelection, select_for_reprocessing
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import ModelInfo
from cxrtriage.worker.scheduler import apply_retention

MODEL = ModelInfo("m", "1", "cxr-triage", "1.2.826.0.1.3680043.10.1367.9", "ab" * 32)


def _study(db: Database, root: Path, uid: str, state: str,
           finished_days_ago: float | None) -> tuple[Path, Path]:
    image, sr = root / uid / "image.dcm", root / uid / "sr.dcm"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"image")
    sr.write_bytes(b"sr")
    with db.session() as session:
        finished = utcnow() - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
        # As a real study: its image arrived before it finished. (A study that received an
        # instance since is one whose file must stay: test_retention_races.py.)
        study = Study(study_uid=uid, state=state, finished_at=finished,
                      last_received_at=finished or utcnow())
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid=uid + ".1")
        session.add(series)
        session.flush()
        session.add(Instance(series_id=series.id, study_id=study.id, sop_instance_uid=uid + ".1.1",
                             sop_class_uid="1.2", transfer_syntax="1.2", path=str(image), size_bytes=5))
        session.add(SrExport(study_id=study.id, model_version_id=register_model(session, MODEL, {}),
                             sr_series_uid=uid + ".2", sr_sop_instance_uid=uid + ".2.1", kind="analysed",
                             path=str(sr), state="sent"))
    return image, sr


def test_retention_purges_only_old_finished_studies(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    root = tmp_path / "storage"
    old = _study(db, root, "1.2.3.1", "done", 10)
    recent = _study(db, root, "1.2.3.2", "done", 1)
    pending = _study(db, root, "1.2.3.3", "processing", None)
    off = Settings(database_url=url, storage_dir=root, retention_days=0)
    assert apply_retention(db, off) == 0 and old[0].exists(), "retention 0 must be off"
    settings = Settings(database_url=url, storage_dir=root, retention_days=5)
    assert apply_retention(db, settings) == 1
    assert not old[0].exists() and old[1].exists(), "the image goes, the SR stays"
    assert recent[0].exists() and pending[0].exists()
    with db.session() as session:
        purged = session.scalars(select(Study.study_uid).where(Study.purged_at.is_not(None))).all()
        assert purged == ["1.2.3.1"]
        model_id = register_model(session, MODEL, {})
        requeued = select_for_reprocessing(session, ReprocessSelection(not_read_by=(model_id,)))
    assert "1.2.3.1" not in requeued and "1.2.3.2" in requeued
    assert apply_retention(db, settings) == 0, "a purged study is purged once"
