"""The heat map as data: a real pipeline run leaves, per classified image, a fractional
Segmentation in the image's own pixel grid that passes dciodvfy, references its image, and holds
the model's class activation map mapped back over the picture the model saw."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage, generate_uid
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.models import Instance, SrExport, Study
from cxrtriage.db.operations import requeue_finished
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.contexts import CR, DX_PRESENTATION, DX_PROCESSING, SECONDARY_CAPTURE
from cxrtriage.dicom.heatmap_map import MAX_FRACTIONAL_VALUE, build_heatmap_segmentation, map_to_source
from cxrtriage.dicom.sr_header import clean_header
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.domain import FINISHED, HEATMAP_KINDS, SR_KINDS, ExportKind, ModelInfo
from cxrtriage.models.examine import examine_file
from cxrtriage.models.inference import Classifier
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.runtime import Runtime
from tests.factory import MALFORMED_SENTINELS, SENTINEL_STRINGS, SENTINELS, radiograph, sample_pixels
from tests.received import receive
from tests.servers import binary

BAND = 60  # rows of padding above and below the picture
MODEL = ModelInfo(name="cxrtriage-test", version="1.0.0", creator="cxr-triage",
                  device_uid="1.2.826.0.1.3680043.10.1367.1", weights_sha256="ab" * 32)


def _runtime(tmp_path: Path, package: Path, **settings: object) -> Runtime:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    config = Settings(database_url=url, storage_dir=tmp_path / "storage", model=package, decode_processes=0,
                      **settings)  # type: ignore[arg-type]
    return Runtime(config, Database(url), InstanceStore(config.storage_dir))


@pytest.fixture
def rt(tmp_path: Path, tiny_package: Path) -> Iterator[Runtime]:
    runtime = _runtime(tmp_path, tiny_package)
    yield runtime
    runtime.close()


def padded_radiograph(study_uid: str) -> pydicom.Dataset:
    """A portrait DX (568 x 448, width/height 0.79) whose picture is letterboxed by black bands:
    the model sees it trimmed and squashed, so the map must come back stretched and shifted."""
    picture = np.kron(sample_pixels("pneumonia-1"), np.ones((2, 2), np.uint8))
    return wrap_image(np.pad(picture, ((BAND, BAND), (0, 0))), study_uid=study_uid,
                      **{**SENTINELS, "PatientAge": "003Y"}, PatientOrientation=["L", "F"])


def _exports(rt: Runtime, study_uid: str) -> list[SrExport]:
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        rows = session.scalars(select(SrExport).where(SrExport.study_id == study.id)
                               .order_by(SrExport.id)).all()
        session.expunge_all()
        return list(rows)


def _source_paths(rt: Runtime, study_uid: str) -> dict[int, str]:
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        return {i.id: i.path for i in session.scalars(select(Instance).where(Instance.study_id == study.id))}


def _dciodvfy_errors(path: str) -> list[str]:
    result = subprocess.run([binary("dciodvfy"), path], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_each_image_gets_a_valid_segmentation_holding_its_map(rt: Runtime) -> None:
    study_uid = generate_uid()
    images = [padded_radiograph(study_uid), radiograph(study_uid, "normal-1")]
    receive(rt, images)
    assert process_ready(rt, study_uid) == {study_uid: "done"}

    rows = _exports(rt, study_uid)
    sources = _source_paths(rt, study_uid)
    assert sorted(r.kind for r in rows if r.kind not in SR_KINDS) == sorted(list(HEATMAP_KINDS) * 2)
    segs = [r for r in rows if r.kind == ExportKind.HEATMAP_SEG]
    assert {r.source_instance_id for r in segs} == set(sources)
    [sr] = [r for r in rows if r.kind in SR_KINDS]
    series = {r.sr_series_uid for r in segs}  # its own series, in the images' study
    others = {sr.sr_series_uid} | {str(ds.SeriesInstanceUID) for ds in images}
    others |= {r.sr_series_uid for r in rows if r.kind == ExportKind.HEATMAP}
    assert len(series) == 1 and series.isdisjoint(others)

    classifier = Classifier(rt.settings.model)
    for row in segs:
        assert _dciodvfy_errors(row.path) == []
        seg = pydicom.dcmread(row.path)
        source = pydicom.dcmread(sources[row.source_instance_id])
        assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "FRACTIONAL"
        assert seg.SOPInstanceUID == row.sr_sop_instance_uid and seg.SeriesInstanceUID == row.sr_series_uid
        assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        [referenced] = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert derivation.SpatialLocationsPreserved == "YES"
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert list(seg.PatientOrientation or []) == list(source.PatientOrientation or [])

        # The model's map of this image, computed again on its own, mapped back over the picture.
        item = examine_file(sources[row.source_instance_id], classifier.manifest)
        assert item.image is not None and item.trim is not None
        _, maps = classifier.predict_with_heatmaps(["x"], item.image[None])
        expected = map_to_source(maps[0], item.trim)
        stored = seg.pixel_array.astype(np.float32) / MAX_FRACTIONAL_VALUE
        assert np.abs(stored - expected).max() <= 1 / MAX_FRACTIONAL_VALUE
        assert expected.max() > 0.5  # a map with something in it (normalised to its maximum)
        if source.Rows != source.Columns:  # the padded one: nothing in the bands
            assert (item.trim.top, item.trim.bottom) == (BAND, source.Rows - BAND)
            assert not stored[:BAND].any() and not stored[-BAND:].any()


def test_a_redo_stores_the_same_segmentation_under_the_same_uids(rt: Runtime) -> None:
    study_uid = generate_uid()
    receive(rt, [padded_radiograph(study_uid)])
    process_ready(rt, study_uid)
    [first] = [r for r in _exports(rt, study_uid) if r.kind == ExportKind.HEATMAP_SEG]
    content = Path(first.path).read_bytes()
    with rt.db.session() as session:
        assert requeue_finished(session, study_uid, tuple(FINISHED), "redo")  # as reprocessing does
    assert process_ready(rt, study_uid) == {study_uid: "done"}
    [again] = [r for r in _exports(rt, study_uid) if r.kind == ExportKind.HEATMAP_SEG]
    assert (again.id, again.sr_sop_instance_uid) == (first.id, first.sr_sop_instance_uid)
    assert again.path == first.path
    assert Path(again.path).read_bytes() == content


@pytest.mark.parametrize(("settings", "kinds"), [
    ({"heatmap_objects": ["segmentation"]}, [ExportKind.HEATMAP_SEG]),
    ({"heatmap_objects": ["secondary-capture"]}, [ExportKind.HEATMAP]),
    ({"heatmaps": False}, []),  # CXRTRIAGE_HEATMAPS=false still turns every heat map off
])
def test_the_setting_chooses_the_heat_map_objects(tmp_path: Path, tiny_package: Path,
                                                  settings: dict[str, object],
                                                  kinds: list[ExportKind]) -> None:
    rt = _runtime(tmp_path, tiny_package, **settings)
    try:
        study_uid = generate_uid()
        receive(rt, [radiograph(study_uid)])
        assert process_ready(rt, study_uid) == {study_uid: "done"}
        assert [r.kind for r in _exports(rt, study_uid) if r.kind not in SR_KINDS] == kinds
    finally:
        rt.close()


@pytest.mark.parametrize(("sop_class", "modality", "orientation", "shape"), [
    (DX_PRESENTATION, "DX", ["L", "F"], (300, 246)),
    (DX_PROCESSING, "DX", ["R", "F"], (246, 300)),
    (CR, "CR", "", (280, 280)),  # no orientation recorded: present and empty
    (SECONDARY_CAPTURE, "OT", ["A", "F"], (224, 224)),  # a digitised film: no Frame of Reference either
])
def test_a_segmentation_of_every_radiograph_class_passes_dciodvfy(
        tmp_path: Path, sop_class: str, modality: str, orientation: object, shape: tuple[int, int]) -> None:
    """Malformed patient attributes too: the clean header leaves them empty, as for the SR, and
    nothing on the way warns with them."""
    patient = {**MALFORMED_SENTINELS, "PatientID": SENTINELS["PatientID"]}
    with pytest.warns(UserWarning):  # pydicom, as the test data is made
        image = wrap_image(np.zeros(shape, np.uint16), sop_class_uid=sop_class, modality=modality, **patient,
                           PatientOrientation=orientation)
    activation = np.zeros(shape, np.float32)
    activation[shape[0] // 4 : shape[0] // 2, shape[1] // 3 :] = np.linspace(0, 1, shape[1] - shape[1] // 3)
    path = tmp_path / "seg.dcm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = build_heatmap_segmentation(clean_header(image), image, activation, MODEL, "PNEUMONIA", 1)
        seg.save_as(path, enforce_file_format=True)
    assert not [w for w in caught if any(s in str(w.message) for s in SENTINEL_STRINGS)]
    assert _dciodvfy_errors(str(path)) == []
    assert pydicom.dcmread(path).SourceImageSequence[0].ReferencedSOPClassUID == sop_class
