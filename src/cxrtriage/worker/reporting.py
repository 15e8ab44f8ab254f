"""The report step: the study's outcome, the SR that states it, and heat maps per classified
image (a Secondary Capture picture and a fractional Segmentation holding the map as data, as
CXRTRIAGE_HEATMAP_OBJECTS says). Every object is derived from its content (content keys), so a
redo stores the same bytes under the same UIDs, and new content supersedes the latest SR."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from cxrtriage.dicom.heatmap_map import build_heatmap_segmentation, heatmap_segmentation_uids, map_to_source
from cxrtriage.dicom.heatmap_writer import build_heatmap, heatmap_uids
from cxrtriage.dicom.sr_header import clean_header
from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
from cxrtriage.domain import Claim, ExportKind, InstanceRef, Reason, StudyState
from cxrtriage.models.examine import Examined
from cxrtriage.worker.runtime import Runtime
from cxrtriage.worker.study_run import Output, StudyRun

logger = logging.getLogger(__name__)


def outcome(run: StudyRun) -> tuple[StudyState, Reason | None]:
    """The study's state and reason, from what the steps found."""
    if run.reason:
        return StudyState.FAILED, run.reason
    if run.predictions:
        return StudyState.DONE, None
    if not run.radiograph:
        return StudyState.SKIPPED, Reason.NOT_RADIOGRAPH
    items = [item for _, item in run.items]
    if all(item.skipped for item in items):
        return StudyState.SKIPPED, Reason.NO_FRONTAL_CHEST_IMAGE
    failures = {item.failed for item in items if item.failed}
    return StudyState.FAILED, failures.pop() if len(failures) == 1 else Reason.NO_IMAGE_ANALYSABLE


def own_patient(run: StudyRun) -> list[tuple[InstanceRef, Dataset]]:
    """The images of the patient the study's first image names: an SR names one patient and
    references only that patient's images."""
    headers = run.headers
    patient = str(headers[0][1].get("PatientID", ""))
    return [(ref, h) for ref, h in headers if str(h.get("PatientID", "")) == patient]


def content_key(run: StudyRun, sources: list[tuple[InstanceRef, Dataset]], model_threshold: float) -> str:
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


def stored_or_built(rt: Runtime, study_uid: str, series_uid: str, sop_uid: str,
                    build: Callable[[], Dataset]) -> tuple[str, Dataset]:
    """The object already stored under these UIDs (byte for byte), or a new one, stored; its
    dataset without pixel data (the record step reads only UIDs, and a batch holds them all)."""
    path = rt.store.path_for(study_uid, series_uid, sop_uid)
    if path.exists():
        return str(path), dcmread(path, stop_before_pixels=True)
    ds = build()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stored = str(rt.store.store(study_uid, series_uid, sop_uid, [buffer.getvalue()]))
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return stored, ds


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
    run.state, run.reason = outcome(run)
    if not (run.radiograph or rt.settings.sr_for_non_radiograph_studies):
        return  # a CT or MR study routed here: the reason is recorded, the PACS is left alone
    if not run.headers:
        logger.error("no readable header in the study; no SR can name its patient",
                     extra={"study_uid": run.claim.study_uid})
        return
    sources = [(ref, clean_header(h, run.minimal_headers)) for ref, h in own_patient(run)]
    manifest = rt.classifier.manifest
    model = manifest.model_info()
    study_uid = run.claim.study_uid
    uids = report_uids(study_uid, content_key(run, sources, manifest.threshold), model)
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
    path, sr = stored_or_built(rt, study_uid, uids.series_uid, uids.sop_uid,
                               lambda: build_report(content, uids, _previous_sr(run.claim, uids.sop_uid)))
    kind = ExportKind.ANALYSED if run.state == StudyState.DONE else ExportKind.NOT_ANALYSED
    run.outputs = [Output(path, sr, kind)]
    if run.heatmaps:
        add_heatmaps(rt, run, headers)


def add_heatmaps(rt: Runtime, run: StudyRun, headers: dict[str, Dataset]) -> None:
    """The heat map objects of each classified image, from the maps the classify step kept: no
    second decode and no second pass. A heat map is an extra: failing to make one is logged and
    never costs the study its result."""
    classified = [(ref, item) for ref, item in run.items
                  if ref.instance_id in run.heatmaps and ref.sop_instance_uid in headers]
    for number, (ref, item) in enumerate(classified, start=1):
        objects = heatmap_objects(rt, run.claim.study_uid, ref, item, headers[ref.sop_instance_uid],
                                  run.heatmaps[ref.instance_id], number)
        for kind, (series_uid, sop_uid), build in objects:
            try:
                path, ds = stored_or_built(rt, run.claim.study_uid, series_uid, sop_uid, build)
            except Exception as exc:  # an optional extra: whatever fails, the study keeps its SR
                logger.warning("heatmap not written", extra={"sop_instance_uid": ref.sop_instance_uid,
                                                             "kind": kind.value, "error": type(exc).__name__})
                continue
            run.outputs.append(Output(path, ds, kind, ref.instance_id))


HeatmapObject = tuple[ExportKind, tuple[str, str], Callable[[], Dataset]]


def heatmap_objects(rt: Runtime, study_uid: str, ref: InstanceRef, item: Examined, header: Dataset,
                    cam: np.ndarray, number: int) -> list[HeatmapObject]:
    """The heat map objects to make of one image (CXRTRIAGE_HEATMAP_OBJECTS), each as its kind,
    its (series, SOP instance) UIDs and its builder: the Secondary Capture draws the map over the
    model's input picture; the Segmentation holds it as data in the image's own pixel grid."""
    from cxrtriage.models.heatmap import overlay

    manifest = rt.classifier.manifest
    model, wanted = manifest.model_info(), rt.settings.heatmap_objects
    objects: list[HeatmapObject] = []
    if "secondary-capture" in wanted and (picture := item.image) is not None:
        objects.append((ExportKind.HEATMAP, heatmap_uids(ref.sop_instance_uid, study_uid, model, ref.sha256),
                        lambda: build_heatmap(header, overlay(picture, cam), model, number, ref.sha256)))
    if "segmentation" in wanted and (box := item.trim) is not None and (image := item.header) is not None:
        uids = heatmap_segmentation_uids(ref.sop_instance_uid, study_uid, model, ref.sha256)
        objects.append((ExportKind.HEATMAP_SEG, uids, lambda: build_heatmap_segmentation(
            header, image, map_to_source(cam, box), model, manifest.flag_label, number, ref.sha256)))
    return objects
