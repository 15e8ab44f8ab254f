"""Claimed studies through the declared steps, `STEPS`, each study in its own error boundary.

Each step reads and extends one study's `StudyRun` (worker/study_run.py); a batch-scoped step
works on all the batch's studies at once. Whatever a study step raises becomes a coded reason
and a "not analysed" SR for that study alone, never silence (`report_failure`). Only if even that
cannot be written (storage or database down) is the claim given back, so the study is redone;
the attempt limit at claim time ends the loop. Studies claimed together share one forward pass.
A new step is one function and one entry in `STEPS`; `pipeline_diagram()` draws them, as
README.md and docs/architecture.md show them (tests/unit/test_readme.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from cxrtriage.db.results import record_export, save_predictions
from cxrtriage.db.studies import finish_study, record_instance_outcomes, release_claim, update_series_states
from cxrtriage.dicom.reading import read_verified
from cxrtriage.domain import SR_KINDS, InstanceRef, InstanceState, Reason, StudyState
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.examine import Examined, gate, prepare
from cxrtriage.models.model_input import PREPROCESSING_VERSION
from cxrtriage.worker.prefetch import Ahead, pool_for
from cxrtriage.worker.reporting import report
from cxrtriage.worker.runtime import Runtime
from cxrtriage.worker.study_run import Output, StudyRun

logger = logging.getLogger(__name__)
__all__ = ["STEPS", "Output", "Scope", "Step", "StudyRun", "pipeline_diagram", "report",
           "report_failure", "run_steps"]
Failure = tuple[Reason, str]  # a file's coded reason and its message


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
    run.headers_read = True
    if run.reason is None and len({str(h.get("PatientID", "")) for _, h in run.headers}) > 1:
        run.reason = Reason.PATIENT_IDENTITY_INCONSISTENT


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
    except Exception as exc:  # an optimisation only: each study's classify step tries alone
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
        record_instance_outcomes(session, {ref.instance_id: _instance_outcome(run, ref, item)
                                      for ref, item in run.items})
        warnings = {ref.instance_id: item.warnings for ref, item in run.items if item.warnings}
        save_predictions(session, run.model_version_id, run.predictions, PREPROCESSING_VERSION, warnings)
        update_series_states(session, claim.study_id)
        for output in run.outputs:
            sop_uid = str(output.dataset.SOPInstanceUID)
            supersedes = claim.previous_sr_uid if output.kind in SR_KINDS else None
            record_export(session, study_id=claim.study_id, model_version_id=run.model_version_id,
                          series_uid=str(output.dataset.SeriesInstanceUID), sop_uid=sop_uid,
                          supersedes_uid=supersedes if supersedes != sop_uid else None,
                          kind=output.kind, path=output.path, destination=rt.settings.sr_destination,
                          source_instance_id=output.source_instance_id)


class Scope(Enum):
    STUDY = "study"  # run(rt, run), once per study, inside that study's error boundary
    BATCH = "batch"  # run(rt, runs), once over the batch's studies still being processed


@dataclass(frozen=True)
class Step:
    """One declared step. A study step that raises costs its study alone: `failure_reason` is what
    its "not analysed" SR says, unless the error carries its own (bad input, storage)."""

    name: str
    run: Callable[[Runtime, Any], None]
    failure_reason: Reason
    scope: Scope = Scope.STUDY


STEPS: tuple[Step, ...] = (
    Step("read and gate", read_and_gate, Reason.INTERNAL_ERROR),
    Step("decode ahead", decode_ahead, Reason.INTERNAL_ERROR, Scope.BATCH),
    Step("preprocess", preprocess, Reason.INTERNAL_ERROR),
    Step("infer together", infer_together, Reason.MODEL_ERROR, Scope.BATCH),
    Step("classify", classify, Reason.MODEL_ERROR),
    Step("report", report, Reason.REPORT_ERROR),
    Step("record", record, Reason.INTERNAL_ERROR),
)


def _reason_for(step: Step, exc: Exception) -> Reason:
    if isinstance(exc, InvalidInputError):
        return exc.reason
    if isinstance(exc, OSError):
        return Reason.STORAGE_ERROR
    return step.failure_reason


def report_failure(rt: Runtime, run: StudyRun, reason: Reason, minimal_headers: bool) -> None:
    """The study's "not analysed" SR, reported and recorded; if even that cannot be written, its
    claim is given back (run.state None) so that the study is redone."""
    run.fail(reason, minimal_headers)
    try:
        if not run.headers_read:  # the SR still needs the headers: read just those
            run.items = []
            read_and_gate(rt, run)
        report(rt, run)
        record(rt, run)
    except Exception as exc:  # storage or database away: no result at all, so redo the study
        logger.error("could not report the failure; the study will be redone",
                     extra={"study_uid": run.claim.study_uid, "error": type(exc).__name__})
        run.state = None
        try:
            with rt.db.session() as session:
                release_claim(session, run.claim.study_id, run.claim.attempt)
        except Exception:  # the database is away: the lease runs out and the study is redone
            logger.warning("claim not released", extra={"study_uid": run.claim.study_uid})


def _in_boundary(rt: Runtime, run: StudyRun, step: Step) -> bool:
    """One study step inside the study's error boundary. False once the study is finished early,
    through `report_failure`."""
    try:
        step.run(rt, run)
        return True
    except Exception as exc:  # the study boundary: any failure becomes the study's coded reason
        logger.error("pipeline step failed; reporting not analysed",
                     extra={"study_uid": run.claim.study_uid, "step": step.name,
                            "error": type(exc).__name__, "attempt": run.claim.attempt})
        reason = _reason_for(step, exc)
    # A failed SR is written again with minimal headers, in case a header value made it fail.
    report_failure(rt, run, reason, minimal_headers=step.failure_reason is Reason.REPORT_ERROR)
    return False


def run_steps(rt: Runtime, runs: list[StudyRun]) -> None:
    """`STEPS` in order over the claimed studies; a study that fails a step leaves the batch with
    its failure reported. Each run's `state` is then the recorded state, or None when nothing was
    recorded (the study changed meanwhile, or its claim was given back)."""
    live = list(runs)
    for step in STEPS:
        if step.scope is Scope.BATCH:
            step.run(rt, live)
        else:
            live = [run for run in live if _in_boundary(rt, run, step)]


def pipeline_diagram() -> str:
    """`STEPS` as README.md and docs/architecture.md draw them: one line a step, batch steps marked."""
    lines = ["claim (DB, worker/processing.py)"]
    for step in STEPS:
        where = "  [batch: all claimed studies together]" if step.scope is Scope.BATCH else ""
        lines.append(f"  -> {step.name}{where}")
    lines.append("  -> SR export (worker/export.py)")
    return "\n".join(lines)
