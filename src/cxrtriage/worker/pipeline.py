"""Claimed studies through a declared sequence of named steps, each study in its own error boundary.

    claim (DB, worker/processing.py) -> read and gate -> preprocess -> classify -> report -> record (DB)

Each step reads and extends one study's `StudyRun`. Whatever a step raises becomes a coded reason
and a "not analysed" SR for that study alone, never silence. Only if even that cannot be written
(storage or database down) is the claim given back, so the study is redone; the attempt limit at
claim time ends the loop. Studies claimed together share one forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from cxrtriage.db.models import Instance
from cxrtriage.db.results import record_export, save_predictions
from cxrtriage.db.studies import finish_study, release_claim, update_series_states
from cxrtriage.dicom.contexts import RADIOGRAPH_SOP_CLASSES
from cxrtriage.dicom.heatmap_writer import build_heatmap, heatmap_uids
from cxrtriage.dicom.reading import read_verified
from cxrtriage.dicom.sr_header import clean_header
from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
from cxrtriage.domain import (
    Claim,
    ExportKind,
    InstanceRef,
    InstanceState,
    Prediction,
    Reason,
    StudyState,
)
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.examine import Examined, gate, prepare
from cxrtriage.models.model_input import PREPROCESSING_VERSION
from cxrtriage.worker.prefetch import Ahead, Decoded, pool_for
from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
Failure = tuple[Reason, str]  # a file's coded reason and its message


@dataclass(frozen=True)
class Output:
    """A DICOM object the report step stored, for the record step to export."""

    path: str
    dataset: Dataset
    kind: ExportKind


@dataclass
class StudyRun:
    """What the steps know about the study so far."""

    claim: Claim
    model_version_id: int
    items: list[tuple[InstanceRef, Examined]] = field(default_factory=list)
    predictions: dict[int, Prediction] = field(default_factory=dict)
    heatmaps: dict[int, np.ndarray] = field(default_factory=dict)  # by instance id, [S, S] in [0, 1]
    batched: tuple[list[Prediction], np.ndarray | None] | None = None  # its share of a joint pass
    decoding: dict[int, Future[Decoded]] = field(default_factory=dict)  # by instance id, in the pool
    ahead: Ahead | None = None  # hands the batch's images to the decoder children (decode_ahead)
    reason: Reason | None = None  # set once the study cannot be analysed
    state: StudyState | None = None
    minimal_headers: bool = False
    outputs: list[Output] = field(default_factory=list)

    def fail(self, reason: Reason, minimal_headers: bool) -> None:
        self.predictions, self.heatmaps, self.outputs = {}, {}, []
        self.reason, self.minimal_headers = reason, minimal_headers

    @property
    def headers(self) -> list[tuple[InstanceRef, Dataset]]:
        return [(ref, item.header) for ref, item in self.items if item.header is not None]


def read_and_gate(rt: Runtime, run: StudyRun) -> None:
    """Read every stored file's header (its sha256 checked against the index; no pixels) and
    decide which images the model may see. A study naming different patients is not analysed."""
    manifest = rt.classifier.manifest
    for ref in run.claim.instances:
        try:
            ds = read_verified(ref.path, ref.sha256, stop_before_pixels=True)
        except InvalidInputError as exc:
            run.items.append((ref, Examined(failed=exc.reason, detail=str(exc))))
            continue
        run.items.append((ref, gate(ds, manifest)))
    if run.reason is None and len({str(h.get("PatientID", "")) for _, h in run.headers}) > 1:
        run.reason = Reason.PATIENT_IDENTITY_INCONSISTENT


def preprocess(rt: Runtime, run: StudyRun) -> None:
    """Each accepted image's model input, from the image its decoder child returned; a batch of
    studies holds only the small model inputs and the headers the report needs."""
    if run.reason:
        return
    for ref, item in run.items:
        if item.header is not None and item.reason is None:
            gray, failed = _decoded(rt, run, ref)
            if failed is not None:
                item.failed, item.detail = failed
            else:
                prepare(item, rt.classifier.manifest.input_size, gray)
        if item.header is not None and "PixelData" in item.header:
            del item.header.PixelData


def _decoded(rt: Runtime, run: StudyRun, ref: InstanceRef) -> tuple[np.ndarray | None, Failure | None]:
    """The child's grayscale image, or the file's coded failure; never decoded in this process."""
    ahead = run.ahead or Ahead(pool_for(rt))
    future = ahead.take(run.decoding, ref.instance_id, ref.path, ref.sha256)
    gray, reason, detail = future.result()  # PoolClosed or CancelledError: the worker is stopping
    return (gray, None) if gray is not None else (None, (Reason(reason), detail))


def decode_ahead(rt: Runtime, runs: list[StudyRun]) -> None:
    """Hand every accepted image of the batch to the decoder children, so that they decode on
    every core while the worker prepares them in order (see worker/prefetch.py)."""
    wanted = [(run, ref) for run in runs if not run.reason
              for ref, item in run.items if item.header is not None and item.reason is None]
    ahead = Ahead(pool_for(rt))
    for run, ref in wanted:
        run.ahead = ahead
        ahead.add(run.decoding, ref.instance_id, ref.path, ref.sha256)
    ahead.fill()


def classify(rt: Runtime, run: StudyRun) -> None:
    """All accepted images of the study in one batch, or its share of a batch across studies."""
    accepted = [(ref, item.image) for ref, item in run.items if item.image is not None]
    if run.reason or not accepted:
        return
    uids = [ref.sop_instance_uid for ref, _ in accepted]
    maps: np.ndarray | None = None
    if run.batched is not None:  # classified with the batch: only the UIDs are its own
        preds = [replace(p, sop_instance_uid=uid) for p, uid in zip(run.batched[0], uids, strict=True)]
        maps = run.batched[1]
    elif rt.settings.heatmaps:
        preds, maps = rt.classifier.predict_with_heatmaps(uids, np.stack([image for _, image in accepted]))
    else:
        preds = rt.classifier.predict(uids, np.stack([image for _, image in accepted]))
    if maps is not None:
        run.heatmaps = {ref.instance_id: cam for (ref, _), cam in zip(accepted, maps, strict=True)}
    run.predictions = {ref.instance_id: pred for (ref, _), pred in zip(accepted, preds, strict=True)}


def _outcome(run: StudyRun) -> tuple[StudyState, Reason | None]:
    if run.reason:
        return StudyState.FAILED, run.reason
    if run.predictions:
        return StudyState.DONE, None
    if not any(ref.sop_class_uid in RADIOGRAPH_SOP_CLASSES for ref in run.claim.instances):
        return StudyState.SKIPPED, Reason.NOT_RADIOGRAPH
    items = [item for _, item in run.items]
    if all(item.skipped for item in items):
        return StudyState.SKIPPED, Reason.NO_FRONTAL_CHEST_IMAGE
    failures = {item.failed for item in items if item.failed}
    return StudyState.FAILED, failures.pop() if len(failures) == 1 else Reason.NO_IMAGE_ANALYSABLE


def _own_patient(run: StudyRun) -> list[tuple[InstanceRef, Dataset]]:
    """The images of the patient the study's first image names: an SR names one patient and
    references only that patient's images."""
    headers = run.headers
    patient = str(headers[0][1].get("PatientID", ""))
    return [(ref, h) for ref, h in headers if str(h.get("PatientID", "")) == patient]


def _content_key(run: StudyRun, sources: list[tuple[InstanceRef, Dataset]], model_threshold: float) -> str:
    """A digest of everything the SR states: its images' exact files and the outcome."""
    content = {
        "images": sorted((ref.sop_instance_uid, ref.sha256) for ref, _ in sources),
        "state": run.state, "reason": run.reason, "minimal": run.minimal_headers,
        "threshold": model_threshold,
        "predictions": sorted((p.sop_instance_uid, sorted(p.probabilities.items()), p.flagged)
                              for p in run.predictions.values()),
        "warnings": sorted((ref.sop_instance_uid, item.warnings) for ref, item in run.items
                           if ref.instance_id in run.predictions),
    }
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


def _stored_or_built(rt: Runtime, study_uid: str, series_uid: str, sop_uid: str,
                     build: Callable[[], Dataset]) -> tuple[str, Dataset]:
    """The object already stored under these UIDs (byte for byte), or a new one, stored."""
    path = rt.store.path_for(study_uid, series_uid, sop_uid)
    if path.exists():
        return str(path), dcmread(path)
    ds = build()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return str(rt.store.store(study_uid, series_uid, sop_uid, [buffer.getvalue()])), ds


def _previous_sr(claim: Claim, new_uid: str) -> Dataset | None:
    if claim.previous_sr_uid in (None, new_uid) or claim.previous_sr_path is None:
        return None
    try:
        return dcmread(claim.previous_sr_path)
    except (OSError, ValueError):
        logger.warning("earlier SR unreadable; new SR will not reference it",
                       extra={"sr_uid": claim.previous_sr_uid})
        return None


def report(rt: Runtime, run: StudyRun) -> None:
    """Decide the outcome and store the SR (and heatmaps) that state it."""
    run.state, run.reason = _outcome(run)
    has_radiograph = any(ref.sop_class_uid in RADIOGRAPH_SOP_CLASSES for ref in run.claim.instances)
    if not (has_radiograph or rt.settings.sr_for_non_radiograph_studies):
        return  # a CT or MR study routed here: the reason is recorded, the PACS is left alone
    if not run.headers:
        logger.error("no readable header in the study; no SR can name its patient",
                     extra={"study_uid": run.claim.study_uid})
        return
    sources = [(ref, clean_header(h, run.minimal_headers)) for ref, h in _own_patient(run)]
    manifest = rt.classifier.manifest
    model = manifest.model_info()
    study_uid = run.claim.study_uid
    uids = report_uids(study_uid, _content_key(run, sources, manifest.threshold), model)
    if uids.sop_uid in run.claim.sr_uids and uids.sop_uid != run.claim.previous_sr_uid:
        # The same content as an SR that was since superseded: a fresh UID supersedes the latest.
        uids = report_uids(study_uid, uids.sop_uid, model, str(run.claim.previous_sr_uid))
    headers = {ref.sop_instance_uid: h for ref, h in sources}
    predictions = [p for p in run.predictions.values() if p.sop_instance_uid in headers]
    content = StudyReport(
        model=model, flag_label=manifest.flag_label, threshold=manifest.threshold,
        predictions=predictions, sources=[h for _, h in sources],
        flagged=any(p.flagged for p in predictions), not_analysed_reason=run.reason,
        warnings={ref.sop_instance_uid: item.warnings for ref, item in run.items
                  if ref.instance_id in run.predictions and item.warnings})
    path, sr = _stored_or_built(rt, study_uid, uids.series_uid, uids.sop_uid,
                                lambda: build_report(content, uids, _previous_sr(run.claim, uids.sop_uid)))
    kind = ExportKind.ANALYSED if run.state == StudyState.DONE else ExportKind.NOT_ANALYSED
    run.outputs = [Output(path, sr, kind)]
    if run.heatmaps:
        _add_heatmaps(rt, run, headers)


def _add_heatmaps(rt: Runtime, run: StudyRun, headers: dict[str, Dataset]) -> None:
    """A heat map Secondary Capture per classified image, from the maps the classify step kept:
    no second decode and no second pass. A heatmap is an extra: failing to make one is logged
    and never costs the study its result."""
    from cxrtriage.models.heatmap import overlay

    model = rt.classifier.manifest.model_info()
    classified = [(ref, item) for ref, item in run.items
                  if ref.instance_id in run.heatmaps and ref.sop_instance_uid in headers]
    for number, (ref, item) in enumerate(classified, start=1):
        header, image, cam = headers[ref.sop_instance_uid], item.image, run.heatmaps[ref.instance_id]
        if image is None:
            continue
        series_uid, sop_uid = heatmap_uids(ref.sop_instance_uid, run.claim.study_uid, model, ref.sha256)
        build = partial(lambda h, i, c, n, sha: build_heatmap(h, overlay(i, c), model, n, sha),
                        header, image, cam, number, ref.sha256)
        try:
            path, sc = _stored_or_built(rt, run.claim.study_uid, series_uid, sop_uid, build)
        except Exception as exc:
            logger.warning("heatmap not written", extra={"sop_instance_uid": ref.sop_instance_uid,
                                                         "error": type(exc).__name__})
            continue
        run.outputs.append(Output(path, sc, ExportKind.HEATMAP))


def _instance_outcome(run: StudyRun, ref: InstanceRef, item: Examined) -> tuple[InstanceState, str]:
    if ref.instance_id in run.predictions:
        return InstanceState.CLASSIFIED, "; ".join(item.warnings)
    if item.skipped:
        return InstanceState.SKIPPED, item.skipped.text
    if item.failed:
        return InstanceState.FAILED, item.failed.text
    return InstanceState.STORED, ""


def record(rt: Runtime, run: StudyRun) -> None:
    """One transaction: the study's outcome, its images' states, the predictions and the exports.
    Recorded only if this claim still holds and no image arrived meanwhile."""
    claim = run.claim
    state = run.state or StudyState.FAILED
    flagged = any(p.flagged for p in run.predictions.values()) if run.predictions else None
    with rt.db.session() as session:
        if not finish_study(session, claim.study_id, claim.revision, claim.attempt, state, run.reason,
                            flagged, run.model_version_id):
            logger.info("study changed during processing (new instances or a lost lease); "
                        "result not recorded", extra={"study_uid": claim.study_uid,
                                                      "attempt": claim.attempt})
            run.state = None
            return
        for ref, item in run.items:
            row = session.get(Instance, ref.instance_id)
            if row is not None:
                row.state, row.reason = _instance_outcome(run, ref, item)
        warnings = {ref.instance_id: item.warnings for ref, item in run.items if item.warnings}
        save_predictions(session, run.model_version_id, run.predictions, PREPROCESSING_VERSION, warnings)
        update_series_states(session, claim.study_id)
        for output in run.outputs:
            sop_uid = str(output.dataset.SOPInstanceUID)
            supersedes = claim.previous_sr_uid if output.kind != ExportKind.HEATMAP else None
            record_export(session, study_id=claim.study_id, model_version_id=run.model_version_id,
                          series_uid=str(output.dataset.SeriesInstanceUID), sop_uid=sop_uid,
                          supersedes_uid=supersedes if supersedes != sop_uid else None,
                          kind=output.kind, path=output.path, destination=rt.settings.sr_destination)


Step = Callable[[Runtime, StudyRun], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("read and gate", read_and_gate),
    ("preprocess", preprocess),
    ("classify", classify),
    ("report", report),
    ("record", record),
)


def _reason_for(step: str, exc: Exception) -> Reason:
    if isinstance(exc, InvalidInputError):
        return exc.reason
    if isinstance(exc, OSError):
        return Reason.STORAGE_ERROR
    return {"classify": Reason.MODEL_ERROR, "report": Reason.REPORT_ERROR}.get(step, Reason.INTERNAL_ERROR)


def _run_step(rt: Runtime, run: StudyRun, name: str) -> bool:
    """One step inside the study's error boundary. False once the study is finished early: its
    failure reported and recorded, or, if even that failed, its claim given back to be redone."""
    try:
        dict(STEPS)[name](rt, run)
        return True
    except Exception as exc:
        logger.error("pipeline step failed; reporting not analysed",
                     extra={"study_uid": run.claim.study_uid, "step": name,
                            "error": type(exc).__name__, "attempt": run.claim.attempt})
        run.fail(_reason_for(name, exc), minimal_headers=name == "report")
    try:
        if name == "read and gate":  # the SR still needs the headers: read just those
            run.items = []
            read_and_gate(rt, run)
        report(rt, run)
        record(rt, run)
    except Exception as exc:
        logger.error("could not report the failure; the study will be redone",
                     extra={"study_uid": run.claim.study_uid, "error": type(exc).__name__})
        run.state = None
        try:
            with rt.db.session() as session:
                release_claim(session, run.claim.study_id, run.claim.attempt)
        except Exception:  # the database is away: the lease runs out and the study is redone
            logger.warning("claim not released", extra={"study_uid": run.claim.study_uid})
    return False


def infer_together(rt: Runtime, runs: list[StudyRun]) -> None:
    """One forward pass over the accepted images of several studies; each study's classify step
    then takes its own share. If the joint pass fails, each study classifies alone, inside its
    own error boundary, so one bad study never fails its neighbours."""
    accepted = [(run, image) for run in runs if not run.reason
                for _, item in run.items if (image := item.image) is not None]
    if len({id(run) for run, _ in accepted}) < 2:
        return
    images = np.stack([image for _, image in accepted])
    try:
        if rt.settings.heatmaps:
            preds, maps = rt.classifier.predict_with_heatmaps([""] * len(images), images)
        else:
            preds, maps = rt.classifier.predict([""] * len(images), images), None
    except Exception as exc:
        logger.warning("batched inference failed; classifying study by study",
                       extra={"studies": len(runs), "error": type(exc).__name__})
        return
    start = 0
    for run in runs:
        count = sum(1 for r, _ in accepted if r is run)
        if count:
            share = maps[start : start + count] if maps is not None else None
            run.batched = (preds[start : start + count], share)
            start += count


def run_steps(rt: Runtime, runs: list[StudyRun]) -> None:
    """The steps over claimed studies: each study read and prepared in its own boundary, their
    images classified in one forward pass, then each reported and recorded in its own boundary.
    Each run's `state` is then the recorded state, or None when nothing was recorded (the study
    changed meanwhile, or its claim was given back)."""
    read = [run for run in runs if _run_step(rt, run, "read and gate")]
    decode_ahead(rt, read)
    ready = [run for run in read if _run_step(rt, run, "preprocess")]
    infer_together(rt, ready)
    for run in ready:
        for name in ("classify", "report", "record"):
            if not _run_step(rt, run, name):
                break
