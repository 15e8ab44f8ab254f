"""The report back to the PACS: a Comprehensive 3D SR holding a TID 1500 measurement report.

One image-level group per classified image (a probability per label and the flag), one
study-level group (flag, threshold, or why the study could not be analysed), the model as the
observing device, and references to every source image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxrtriage.dicom.uids import derive_uid
from cxrtriage.domain import ModelInfo, Prediction, Reason

SCHEME = "99CXRT"  # private coding scheme of cxr-triage
SERIES_NUMBER = 9901
CHEST_XRAY = Code("399208008", "SCT", "Plain X-ray of chest")
FLAGGED = hd.sr.CodedConcept("FLAGGED", SCHEME, "Flagged for radiologist review")
THRESHOLD = hd.sr.CodedConcept("THRESHOLD", SCHEME, "Operating threshold")
STATUS = hd.sr.CodedConcept("STATUS", SCHEME, "Analysis status")
INTENDED_USE = hd.sr.CodedConcept("USE", SCHEME, "Intended use")
NOT_DIAGNOSTIC = hd.sr.CodedConcept("TRIAGE-ONLY", SCHEME, "Triage aid, not for diagnostic use")
ANALYSED = hd.sr.CodedConcept("ANALYSED", SCHEME, "Analysed")
INPUT_WARNING = hd.sr.CodedConcept("INPUT-WARNING", SCHEME, "Input warning")
NO_UNITS = Code("1", "UCUM", "no units")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
NO = hd.sr.CodedConcept("373067005", "SCT", "No")


@dataclass(frozen=True)
class StudyReport:
    """Everything the SR states, already decided by the pipeline."""

    model: ModelInfo
    flag_label: str
    threshold: float
    predictions: list[Prediction]
    sources: list[Dataset]  # clean headers (sr_header.clean_header) of the study's images
    flagged: bool = False
    not_analysed_reason: Reason | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportUids:
    series_uid: str
    sop_uid: str


def report_uids(study_uid: str, content_key: str, model: ModelInfo, *salt: str) -> ReportUids:
    """The SR's UIDs. The series is the same for a study and model; the instance UID follows
    `content_key`, a digest of everything the SR states, so the same UID never carries different
    content. `salt` gives a fresh UID to content that an earlier SR already had."""
    series = derive_uid(study_uid, "sr-series", model.weights_sha256)
    return ReportUids(series, derive_uid(study_uid, "sr", content_key, model.weights_sha256, *salt))


def _probability(label: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(f"P-{label}"[:16], SCHEME, f"Probability of {label}"[:64])


def _text_code(prefix: str, text: str) -> hd.sr.CodedConcept:
    """Our own readable reasons as coded values of the private scheme (meaning <= 64 chars)."""
    value = f"{prefix}-" + hashlib.sha1(text.encode()).hexdigest()[:8].upper()
    return hd.sr.CodedConcept(value, SCHEME, text[:64])


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version)


def _image_group(pred: Prediction, source: Dataset, model: ModelInfo,
                 warnings: list[str]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=_probability(label), value=round(prob, 6), unit=NO_UNITS,
                                      algorithm_id=_algorithm(model))
                    for label, prob in pred.probabilities.items()]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(pred.sop_instance_uid, model.weights_sha256, "image"),
            identifier=f"image {pred.sop_instance_uid}"[:64]),
        algorithm_id=_algorithm(model),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FLAGGED, YES if pred.flagged else NO)]
        + [hd.sr.QualitativeEvaluation(INPUT_WARNING, _text_code("W", w)) for w in warnings],
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID),
                                                            str(source.SOPInstanceUID))],
    )


def _study_group(report: StudyReport, study_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations = [hd.sr.QualitativeEvaluation(INTENDED_USE, NOT_DIAGNOSTIC)]
    measurements = []
    if report.not_analysed_reason:
        reason = report.not_analysed_reason
        evaluations.append(hd.sr.QualitativeEvaluation(
            STATUS, hd.sr.CodedConcept(reason.value.upper(), SCHEME, f"Not analysed: {reason.text}"[:64])))
    else:
        evaluations += [hd.sr.QualitativeEvaluation(STATUS, ANALYSED),
                        hd.sr.QualitativeEvaluation(FLAGGED, YES if report.flagged else NO)]
        measurements.append(hd.sr.Measurement(name=THRESHOLD, value=report.threshold, unit=NO_UNITS,
                                              algorithm_id=_algorithm(report.model)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(study_uid, report.model.weights_sha256, "study"), identifier="study result"),
        algorithm_id=_algorithm(report.model),
        finding_type=hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
        if report.flag_label.upper() == "PNEUMONIA" else None,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )


def build_report(report: StudyReport, uids: ReportUids,
                 previous: Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    """The SR dataset; `previous` is an earlier SR of ours that this one supersedes."""
    if not report.sources:
        raise ValueError("sources must hold at least one image header of the study")
    study_uid = str(report.sources[0].StudyInstanceUID)
    by_uid = {str(s.SOPInstanceUID): s for s in report.sources}
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=report.model.device_uid, name=report.model.name[:64],
            manufacturer_name=report.model.creator[:64],
            model_name=f"{report.model.name} {report.model.version}"[:64]))
    groups = [_study_group(report, study_uid)]
    groups += [_image_group(p, by_uid[p.sop_instance_uid], report.model,
                            report.warnings.get(p.sop_instance_uid, [])) for p in report.predictions]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    now = datetime.now()
    return hd.sr.Comprehensive3DSR(
        evidence=report.sources,
        content=content,
        series_instance_uid=uids.series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_uid,
        instance_number=1,
        manufacturer="cxr-triage",
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=[previous] if previous is not None else None,
        series_description="cxr-triage AI result (not for diagnostic use)",
        content_date=now.date(),
        content_time=now.time(),
    )
