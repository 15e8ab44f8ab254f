"""Processing one study: claim, gate, preprocess, classify, record, write the SR.

The steps, in order: claim (DB) -> read and gate each image -> preprocess -> classify the
accepted images as one batch -> write the SR -> record results, states and the export (DB).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass, field
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from cxrtriage.db.models import Instance
from cxrtriage.db.results import (
    HEATMAP_KIND,
    latest_export,
    record_export,
    register_model,
    save_predictions,
)
from cxrtriage.db.studies import (
    claim_study,
    extend_lease,
    finish_study,
    study_instances,
    update_series_states,
)
from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.heatmap_writer import build_heatmap
from cxrtriage.dicom.preprocess import PREPROCESSING_VERSION, dataset_to_gray, fit_to_square
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
from cxrtriage.domain import InstanceState, Prediction, StudyState
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.gradcam import overlay
from cxrtriage.models.inference import Classifier
from cxrtriage.models.package import Manifest
from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_IN_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass
class Examined:
    """Per-instance outcome of reading and gating, before classification."""

    instance_id: int
    sop_uid: str
    header: Dataset | None = None
    image: np.ndarray | None = None
    state: str = InstanceState.STORED
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def age_warning(ds: Dataset, manifest: Manifest) -> str:
    """A note when the patient's age is outside the model's intended population."""
    population = manifest.intended_population
    low, high = population.get("min_age_years"), population.get("max_age_years")
    match = _AGE.match(str(ds.get("PatientAge", "")))
    if not match or low is None or high is None:
        return ""
    years = int(match.group(1)) * _AGE_IN_YEARS[match.group(2)]
    if low <= years < high + 1:
        return ""
    return f"age outside intended population ({low}-{high} years)"


def examine(instance_id: int, sop_uid: str, path: str, manifest: Manifest) -> Examined:
    item = Examined(instance_id, sop_uid)
    try:
        ds = read_dataset(path)
        item.header = ds
        decision = gate_image(ds)
        if not decision.accepted:
            item.state, item.reason = InstanceState.SKIPPED, decision.reason
            return item
        item.warnings = list(decision.warnings)
        if note := age_warning(ds, manifest):
            item.warnings.append(note)
        item.image = fit_to_square(dataset_to_gray(ds), manifest.input_size)
    except InvalidInputError as exc:
        item.state, item.reason = InstanceState.FAILED, str(exc)
    return item


def _study_outcome(items: list[Examined]) -> tuple[StudyState, str]:
    if any(i.image is not None for i in items):
        return StudyState.DONE, ""
    reasons = sorted({i.reason for i in items if i.reason})
    if all(i.state == InstanceState.SKIPPED for i in items):
        return StudyState.SKIPPED, "no frontal chest radiograph: " + "; ".join(reasons)
    return StudyState.FAILED, "no image could be analysed: " + "; ".join(reasons)


def _previous_sr(rt: Runtime, study_id: int, new_uid: str) -> Dataset | None:
    """The study's earlier SR, which a genuinely new result supersedes."""
    with rt.db.session() as session:
        last = latest_export(session, study_id)
        path, uid = (last.path, last.sr_sop_instance_uid) if last else (None, None)
    if uid is None or uid == new_uid or path is None:
        return None
    try:
        return dcmread(path)
    except (OSError, ValueError):
        logger.warning("earlier SR unreadable; new SR will not reference it", extra={"sr_uid": uid})
        return None


def process_study(rt: Runtime, study_uid: str) -> str | None:
    """Process a queued study once. Returns the final state, or None when there was nothing to
    do (another worker has it, or it is no longer queued)."""
    classifier = rt.classifier
    manifest = classifier.manifest
    with rt.db.session() as session:
        study = claim_study(session, study_uid, rt.settings.processing_lease_seconds)
        if study is None:
            return None
        study_id, revision, attempt = study.id, int(study.claimed_revision or 0), study.attempts
        rows = [(i.id, i.sop_instance_uid, i.path) for i in study_instances(session, study_id)]
        model_version_id = register_model(session, manifest.model_info(), asdict(manifest))
    logger.info("processing study", extra={"study_uid": study_uid, "instances": len(rows),
                                           "attempt": attempt})
    with LeaseKeeper(rt, study_id, attempt):
        items = [examine(iid, uid, path, manifest) for iid, uid, path in rows]
        accepted = [i for i in items if i.image is not None]
        predictions: dict[int, Prediction] = {}
        if accepted:
            images = np.stack([i.image for i in accepted if i.image is not None])
            preds = classifier.predict([i.sop_uid for i in accepted], images)
            for item, pred in zip(accepted, preds, strict=True):
                predictions[item.instance_id] = pred
                item.state = InstanceState.CLASSIFIED
        state, reason = _study_outcome(items)
        flagged = any(p.flagged for p in predictions.values()) if predictions else None
        report = StudyReport(model=manifest.model_info(), flag_label=manifest.flag_label,
                             threshold=manifest.threshold, predictions=list(predictions.values()),
                             sources=[i.header for i in items if i.header is not None],
                             flagged=bool(flagged), not_analysed_reason=reason,
                             warnings={i.sop_uid: i.warnings for i in accepted if i.warnings})
        sr_path, sr = _write_sr(rt, study_id, report)
        heatmaps = _write_heatmaps(rt, classifier, accepted) if rt.settings.heatmaps else []
    with rt.db.session() as session:
        if not finish_study(session, study_id, revision, attempt, state, reason, flagged,
                            model_version_id):
            logger.info("study changed during processing (new instances or a lost lease); "
                        "result not recorded", extra={"study_uid": study_uid, "attempt": attempt})
            return None
        for item in items:
            row = session.get(Instance, item.instance_id)
            if row is not None:
                row.state, row.reason = item.state, item.reason or "; ".join(item.warnings)
        save_predictions(session, model_version_id, predictions, PREPROCESSING_VERSION,
                         {i.instance_id: i.warnings for i in items if i.warnings})
        update_series_states(session, study_id)
        export = record_export(
            session, study_id=study_id, model_version_id=model_version_id,
            series_uid=str(sr.SeriesInstanceUID), sop_uid=str(sr.SOPInstanceUID),
            supersedes_uid=_supersedes(sr),
            kind="analysed" if state == StudyState.DONE else "not_analysed", path=sr_path,
            destination=rt.settings.sr_destination)
        export_id = export.id
        for path, ds in heatmaps:
            record_export(session, study_id=study_id, model_version_id=model_version_id,
                          series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.SOPInstanceUID),
                          supersedes_uid=None, kind=HEATMAP_KIND, path=path,
                          destination=rt.settings.sr_destination)
    logger.info("study finished", extra={"study_uid": study_uid, "state": state,
                                         "flagged": flagged, "export_id": export_id})
    return state


class LeaseKeeper:
    """Renews the study's lease while this worker works on it, so that only a dead worker's
    study is handed to another."""

    def __init__(self, rt: Runtime, study_id: int, attempt: int) -> None:
        self.rt, self.study_id, self.attempt = rt, study_id, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        lease = self.rt.settings.processing_lease_seconds
        while not self._stop.wait(lease / 3):
            try:
                with self.rt.db.session() as session:
                    if not extend_lease(session, self.study_id, self.attempt, lease):
                        return
            except Exception:  # a missed heartbeat only risks a redo, never a loss
                logger.warning("lease renewal failed", extra={"study_id": self.study_id})

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _supersedes(sr: Dataset) -> str | None:
    if "PredecessorDocumentsSequence" not in sr:
        return None
    series = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    return str(series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _write_heatmaps(rt: Runtime, classifier: Classifier,
                    accepted: list[Examined]) -> list[tuple[str, Dataset]]:
    """A Grad-CAM Secondary Capture per classified image, stored beside the study's images."""
    written = []
    for number, item in enumerate(accepted, start=1):
        if item.header is None or item.image is None:
            continue
        sc = build_heatmap(item.header, overlay(classifier, item.image), classifier.manifest.model_info(),
                           number)
        buffer = BytesIO()
        sc.save_as(buffer, enforce_file_format=True)
        path = rt.store.store(str(sc.StudyInstanceUID), str(sc.SeriesInstanceUID),
                              str(sc.SOPInstanceUID), [buffer.getvalue()])
        written.append((str(path), sc))
    return written


def _write_sr(rt: Runtime, study_id: int, report: StudyReport) -> tuple[str, Dataset]:
    study_uid = str(report.sources[0].StudyInstanceUID)
    _, sop_uid = report_uids(study_uid, [str(s.SOPInstanceUID) for s in report.sources], report.model)
    previous = _previous_sr(rt, study_id, sop_uid)
    sr = build_report(report, previous)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    path = rt.store.store(study_uid, str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID), [buffer.getvalue()])
    return str(path), sr
