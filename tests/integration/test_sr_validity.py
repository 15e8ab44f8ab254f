"""Every kind of SR we write passes dciodvfy with zero errors and is readable by dcmtk's dsrdump."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from cxrtriage.dicom.sr_header import clean_header
from cxrtriage.dicom.sr_writer import StudyReport, build_report, report_uids
from cxrtriage.domain import ModelInfo, Prediction, Reason
from tests.factory import radiograph
from tests.servers import binary

MODEL = ModelInfo(name="cxrtriage-test", version="1.0.0", creator="cxr-triage",
                  device_uid="1.2.826.0.1.3680043.10.1367.1", weights_sha256="ab" * 32)


def _prediction(ds, p: float) -> Prediction:
    return Prediction(str(ds.SOPInstanceUID), {"NORMAL": 1 - p, "PNEUMONIA": p}, p >= 0.5, 0.5, "PNEUMONIA")


def _validate(path: Path) -> None:
    result = subprocess.run([binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    dump = subprocess.run([binary("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "Comprehensive 3D SR" in dump.stdout, dump.stderr


def _build(report: StudyReport, previous=None):  # type: ignore[no-untyped-def]
    key = ",".join(str(p.probabilities) for p in report.predictions) + str(report.not_analysed_reason)
    uids = report_uids(str(report.sources[0].StudyInstanceUID), key, report.model)
    return build_report(report, uids, previous)


@pytest.fixture
def study():
    uid = generate_uid()
    return [clean_header(radiograph(uid)), clean_header(radiograph(uid, "normal-1"))]


@pytest.mark.parametrize(("kind", "probabilities", "reason"), [
    ("flagged", [0.91, 0.12], None),
    ("normal", [0.08, 0.12], None),
    ("not analysed", [], Reason.NO_FRONTAL_CHEST_IMAGE),
])
def test_sr_is_valid(tmp_path, study, kind, probabilities, reason):
    preds = [_prediction(ds, p) for ds, p in zip(study, probabilities, strict=False)]
    warnings = {p.sop_instance_uid: ["age outside intended population (1-5 years)",
                                     "view position not recorded; assumed frontal"] for p in preds[:1]}
    report = StudyReport(MODEL, "PNEUMONIA", 0.5, preds, study, flagged=any(p.flagged for p in preds),
                         not_analysed_reason=reason, warnings=warnings)
    sr = _build(report)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == study[0].StudyInstanceUID
    path = tmp_path / f"{kind}.dcm"
    sr.save_as(path, enforce_file_format=True)
    _validate(path)
    dump = subprocess.run([binary("dsrdump"), str(path)], capture_output=True, text=True).stdout
    assert "Triage aid, not for diagnostic use" in dump
    if warnings:
        assert "age outside intended population" in dump
    if reason:
        assert f"Not analysed: {reason.text}" in dump


def test_superseding_sr_is_valid_and_references_its_predecessor(tmp_path, study):
    first = _build(StudyReport(MODEL, "PNEUMONIA", 0.5, [_prediction(study[0], 0.7)], study[:1]))
    second_model = ModelInfo(**{**MODEL.__dict__, "version": "1.1.0", "weights_sha256": "cd" * 32})
    second = _build(StudyReport(second_model, "PNEUMONIA", 0.5,
                                [_prediction(ds, 0.3) for ds in study], study), previous=first)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    path = tmp_path / "superseding.dcm"
    second.save_as(path, enforce_file_format=True)
    _validate(path)


def test_heatmap_secondary_capture_is_valid(tmp_path, study, tiny_package):
    from cxrtriage.dicom.heatmap_writer import build_heatmap
    from cxrtriage.dicom.preprocess import dataset_to_gray
    from cxrtriage.models.heatmap import overlay
    from cxrtriage.models.inference import Classifier
    from cxrtriage.models.model_input import fit_to_square

    classifier = Classifier(tiny_package)
    image = fit_to_square(dataset_to_gray(radiograph()), classifier.input_size)
    _, maps = classifier.predict_with_heatmaps(["x"], image[None])
    sc = build_heatmap(study[0], overlay(image, maps[0]), MODEL, 1)
    assert sc.StudyInstanceUID == study[0].StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == study[0].SOPInstanceUID
    path = tmp_path / "heatmap.dcm"
    sc.save_as(path, enforce_file_format=True)
    result = subprocess.run([binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    assert pydicom_read(path).pixel_array.shape == (classifier.input_size, classifier.input_size, 3)


def pydicom_read(path: Path):  # type: ignore[no-untyped-def]
    import pydicom

    return pydicom.dcmread(path)


def test_sr_uid_follows_content():
    a = report_uids("1.2.3", "content-a", MODEL)
    assert a == report_uids("1.2.3", "content-a", MODEL)
    assert a.series_uid == report_uids("1.2.3", "content-b", MODEL).series_uid
    assert a.sop_uid != report_uids("1.2.3", "content-b", MODEL).sop_uid
    assert a.sop_uid != report_uids("1.2.3", "content-a", MODEL, "salt").sop_uid


MALFORMED = {
    "missing type 2": {"PatientName": None, "PatientBirthDate": None, "PatientSex": None, "StudyID": None,
                       "StudyDate": None, "StudyTime": None, "AccessionNumber": None,
                       "ReferringPhysicianName": None},
    "invalid age": {"PatientAge": "62"},
    "bad dates and times": {"StudyDate": "20231345", "PatientBirthDate": "1.2.1990", "StudyTime": "256199"},
    "over-long values": {"PatientName": "SENTINELNAME^" + "X" * 80, "AccessionNumber": "SENTINELACC42" * 3},
    "odd sex": {"PatientSex": "Male"},
    "latin-1 name": {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "SENTINELNAME^Jürgen"},
    "unknown character set": {"SpecificCharacterSet": "ISO_IR 999"},
    "multi-valued name": {"PatientName": ["SENTINELNAME^A", "B^C"]},
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("minimal", [False, True])
def test_sr_from_malformed_header_is_valid(tmp_path, case, minimal):
    source = radiograph()
    for name, value in MALFORMED[case].items():
        if value is None:
            delattr(source, name)
        else:
            setattr(source, name, value)
    header = clean_header(source, minimal=minimal)
    assert header.PatientID == source.PatientID  # kept exactly as received
    assert "PatientAge" not in header or header.PatientAge == "003Y"
    sr = _build(StudyReport(MODEL, "PNEUMONIA", 0.5, [_prediction(header, 0.7)], [header]))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    _validate(path)
