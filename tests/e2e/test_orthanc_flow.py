"""PACS -> receiver -> worker -> SR -> PACS, with Orthanc as the PACS and no mocks in the path."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import cast

import pydicom
import pytest
from pydicom.uid import SegmentationStorage, generate_uid

from cxrtriage.dicom.contexts import SECONDARY_CAPTURE
from tests.conftest import BUNDLED
from tests.factory import COMPREHENSIVE_3D_SR, radiograph, write_study
from tests.peers import storescu
from tests.servers import Orthanc, wait_for


def _content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(_content_items(item))
    return items


def _meaning(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in item else ""


def _find_sr(orthanc: Orthanc, study_uid: str) -> pydicom.Dataset | None:
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
        "StudyInstanceUID": study_uid, "SOPClassUID": COMPREHENSIVE_3D_SR}})
    if not found:
        return None
    raw = orthanc.get(f"/instances/{found[0]}/file")  # type: ignore[index]
    return pydicom.dcmread(BytesIO(raw))  # type: ignore[arg-type]


@pytest.mark.slow
def test_study_sent_by_orthanc_comes_back_as_sr(tmp_path: Path, service_factory, tiny_package) -> None:
    package = BUNDLED if (BUNDLED / "manifest.json").is_file() else tiny_package
    service = service_factory({"CXRTRIAGE_MODEL": str(package)})
    orthanc = Orthanc(tmp_path, tmp_path, "CXRTRIAGE", service.port)
    service.env["CXRTRIAGE_SR_DESTINATION"] = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    service.procs.append(orthanc.proc)
    service.start("serve", "serve")
    study_uid = generate_uid()
    series_uid = generate_uid()
    images = [radiograph(study_uid, "pneumonia-1", SeriesInstanceUID=series_uid, InstanceNumber=1),
              radiograph(study_uid, "normal-1", SeriesInstanceUID=series_uid, InstanceNumber=2)]
    ids = []
    for ds in images:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        ids.append(orthanc.post("/instances", buffer.getvalue())["ID"])  # type: ignore[index]
    wait_for(lambda: _echo_ok(orthanc), 60, "receiver to answer Orthanc's C-ECHO", interval=0.5)
    orthanc.post("/modalities/cxrtriage/store", {"Resources": ids, "Synchronous": True})

    sr = wait_for(lambda: _find_sr(orthanc, study_uid), 120, "the SR to arrive in Orthanc", 0.5)
    assert isinstance(sr, pydicom.Dataset)
    studies = json.loads(service.cli("studies", "--json"))["studies"]
    row = next(s for s in studies if s["study_uid"] == study_uid)
    assert row["state"] == "done" and row["sr_state"] == "sent"

    # The SR: same study, new series, our model as the observer, one probability per label per image.
    assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != series_uid
    assert sr.SOPInstanceUID == row["sr_uid"]
    manifest = json.loads((package / "manifest.json").read_text())
    items = _content_items(sr)
    texts = {_meaning(i): str(i.TextValue) for i in items if i.ValueType == "TEXT"}
    assert texts["Device Observer Name"] == manifest["name"]
    assert texts["Algorithm Version"] == manifest["version"]
    referenced = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for i in items if i.ValueType == "IMAGE"}
    assert referenced == {str(ds.SOPInstanceUID) for ds in images}
    per_image = _image_results(sr, manifest["flag_label"])
    db_by_uid = {uid: r["probability"] for uid, r in row["image_results"].items()}
    assert per_image == pytest.approx(db_by_uid, abs=1e-5)
    threshold = [float(i.MeasuredValueSequence[0].NumericValue) for i in items
                 if _meaning(i) == "Operating threshold"]
    assert threshold == [pytest.approx(manifest["threshold"])]
    study_flag = next(str(i.ConceptCodeSequence[0].CodeMeaning) for i in items
                      if i.ValueType == "CODE" and _meaning(i) == "Flagged for radiologist review")
    assert study_flag == ("Yes" if max(per_image.values()) >= manifest["threshold"] else "No")
    assert row["flagged"] == (study_flag == "Yes")
    if package == BUNDLED:  # the trained model must flag the pneumonia sample and not the normal one
        pneumonia, normal = (str(ds.SOPInstanceUID) for ds in images)
        assert per_image[pneumonia] >= manifest["threshold"] > per_image[normal]

    # A heat map Secondary Capture per classified image arrives in the same study.
    heatmaps = wait_for(lambda: orthanc.post("/tools/find", {"Level": "Instance", "Query": {
        "StudyInstanceUID": study_uid, "SOPClassUID": SECONDARY_CAPTURE}}), 60, "heatmaps in Orthanc")
    assert len(heatmaps) == 2  # type: ignore[arg-type]

    # ... and a heat map Segmentation per image (the map as data on the image's pixel grid),
    # which Orthanc accepts and which references its image in the same study.
    def segmentations() -> list[str] | None:
        found = cast(list[str], orthanc.post("/tools/find", {"Level": "Instance", "Query": {
            "StudyInstanceUID": study_uid, "SOPClassUID": SegmentationStorage}}))
        return found if len(found) >= 2 else None

    segs = cast(list[str], wait_for(segmentations, 60, "heatmap segmentations in Orthanc"))
    assert len(segs) == 2
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    referenced_images = set()
    for instance in segs:
        seg = pydicom.dcmread(BytesIO(cast(bytes, orthanc.get(f"/instances/{instance}/file"))))
        assert seg.SegmentationType == "FRACTIONAL" and seg.StudyInstanceUID == study_uid
        source = by_uid[str(seg.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert seg.PatientID == source.PatientID and seg.SeriesInstanceUID != series_uid
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        referenced_images.add(str(source.SOPInstanceUID))
    assert referenced_images == set(by_uid)

    # Sending the same images again creates no second SR; a new image supersedes the first SR.
    orthanc.post("/modalities/cxrtriage/store", {"Resources": ids, "Synchronous": True})
    extra = radiograph(study_uid, "pneumonia-2", SeriesInstanceUID=series_uid, InstanceNumber=3)
    sent = storescu(service.port, write_study(tmp_path / "extra", [extra]))
    assert sent.returncode == 0, sent.stderr

    def superseding() -> pydicom.Dataset | None:
        found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
            "StudyInstanceUID": study_uid, "SOPClassUID": COMPREHENSIVE_3D_SR}})
        if len(found) < 2:  # type: ignore[arg-type]
            return None
        for instance in found:  # type: ignore[union-attr]
            ds = pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{instance}/file")))  # type: ignore[arg-type]
            if ds.SOPInstanceUID != sr.SOPInstanceUID:
                return ds
        return None

    newer = wait_for(superseding, 120, "the superseding SR", interval=0.5)
    assert isinstance(newer, pydicom.Dataset)
    predecessor = newer.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert len(_image_results(newer, manifest["flag_label"])) == 3
    assert len(orthanc.post("/tools/find", {"Level": "Instance", "Query": {  # type: ignore[arg-type]
        "StudyInstanceUID": study_uid, "SOPClassUID": COMPREHENSIVE_3D_SR}})) == 2

    service.stop()
    service.check_logs()


def _image_results(sr: pydicom.Dataset, label: str) -> dict[str, float]:
    """Flag-label probability per referenced image, read from each image measurement group."""
    out = {}
    for group in _content_items(sr):
        children = group.get("ContentSequence", [])
        refs = [c for c in children if c.ValueType == "IMAGE"]
        probs = [c for c in children if c.ValueType == "NUM" and _meaning(c) == f"Probability of {label}"]
        if refs and probs:
            uid = str(refs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            out[uid] = float(probs[0].MeasuredValueSequence[0].NumericValue)
    return out


def _echo_ok(orthanc: Orthanc) -> bool:
    try:
        orthanc.post("/modalities/cxrtriage/echo", b"{}")
        return True
    except Exception:
        return False
