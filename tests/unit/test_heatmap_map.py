"""dicom/heatmap_map.py: a heat map in the model's square goes back over the picture it was made
from, in the source image's pixel grid, as tables of known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrtriage.dicom.geometry import TrimBox, trim_box
from cxrtriage.dicom.heatmap_map import (
    MAX_FRACTIONAL_VALUE,
    build_heatmap_segmentation,
    heatmap_segmentation_uids,
    map_to_source,
)
from cxrtriage.dicom.heatmap_writer import heatmap_uids
from cxrtriage.domain import ModelInfo
from cxrtriage.models.model_input import fit_to_square

MODEL = ModelInfo(name="cxrtriage-test", version="1.0.0", creator="cxr-triage",
                  device_uid="1.2.826.0.1.3680043.10.1367.1", weights_sha256="ab" * 32)


@pytest.mark.parametrize(("cam", "box", "expected"), [
    # the same size, no trim: the map itself
    ([[0.0, 1.0], [0.5, 0.25]], TrimBox(2, 2, 0, 2, 0, 2), [[0.0, 1.0], [0.5, 0.25]]),
    # stretched from 2 to 4 columns, pixel centres aligned: -0.25 (held at 0), 0.25, 0.75, 1.25 (held at 1)
    ([[0.0, 1.0]], TrimBox(1, 4, 0, 1, 0, 4), [[0.0, 0.25, 0.75, 1.0]]),
    # ... and from 2 to 4 rows
    ([[0.0], [1.0]], TrimBox(4, 1, 0, 4, 0, 1), [[0.0], [0.25], [0.75], [1.0]]),
    # a trimmed box: the map inside it, zero in the bands
    ([[0.0, 1.0]], TrimBox(3, 6, 1, 2, 1, 5), [[0, 0, 0, 0, 0, 0], [0, 0.0, 0.25, 0.75, 1.0, 0],
                                                [0, 0, 0, 0, 0, 0]]),
    # squeezed from 4 columns to 2: the mean of each pair's centre neighbours
    ([[0.0, 1.0, 2.0, 3.0]], TrimBox(1, 2, 0, 1, 0, 2), [[0.5, 2.5]]),
])
def test_map_to_source_known_values(cam: list[list[float]], box: TrimBox,
                                    expected: list[list[float]]) -> None:
    out = map_to_source(np.array(cam, dtype=np.float32), box)
    assert out.dtype == np.float32 and out.shape == (box.rows, box.columns)
    assert out == pytest.approx(np.array(expected, dtype=np.float32), abs=1e-6)


SIZE = 224  # the bundled model's input


@pytest.mark.parametrize(("rows", "columns", "bands"), [
    (224, 224, (0, 0, 0, 0)),  # square, the model's own size: nothing moves
    (900, 900, (0, 0, 0, 0)),  # square, larger
    (1000, 820, (0, 0, 0, 0)),  # 0.82 (width / height): a portrait detector
    (820, 1000, (0, 0, 0, 0)),  # 1.22: landscape
    (1000, 820, (90, 90, 0, 0)),  # padded: a letterboxed picture, bands top and bottom
    (900, 1100, (0, 0, 140, 60)),  # padded unevenly left and right
])
def test_the_map_lands_where_the_model_looked(rows: int, columns: int,
                                              bands: tuple[int, int, int, int]) -> None:
    """A picture with one bright blob, through the model's input path (trim, squash) and back:
    the map of the model input lies on the picture, the blob on the blob, zero in the bands."""
    top, bottom, left, right = bands
    height, width = rows - top - bottom, columns - left - right
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = (0.3 * height, 0.65 * width)
    blob = np.exp(-(((y - centre[0]) / (0.08 * height)) ** 2 + ((x - centre[1]) / (0.08 * width)) ** 2))
    picture = (0.1 + 0.2 * x / width + 0.2 * y / height + 0.5 * blob).astype(np.float32)  # no uniform edge
    gray = np.pad(picture, ((top, bottom), (left, right)), constant_values=0.0)
    box = trim_box(gray)
    assert (box.top, box.bottom, box.left, box.right) == (top, rows - bottom, left, columns - right)

    back = map_to_source(fit_to_square(gray, SIZE), box)
    assert back.shape == (rows, columns)
    inside = back[box.top : box.bottom, box.left : box.right]
    assert np.abs(inside - picture).max() < 0.03  # smooth: the squash and its inverse agree
    outside = back.copy()
    outside[box.top : box.bottom, box.left : box.right] = 0
    assert not outside.any()
    peak = np.unravel_index(np.argmax(inside), inside.shape)
    assert abs(peak[0] - centre[0]) <= height / SIZE + 1 and abs(peak[1] - centre[1]) <= width / SIZE + 1


@pytest.mark.parametrize(("height", "width"), [(224, 224), (1000, 820), (820, 1000), (57, 300)])
def test_map_to_source_is_torchs_bilinear_resize(height: int, width: int) -> None:
    """The same resampling torch does (F.interpolate, bilinear, align_corners=False) when the
    worker upsamples a feature map, so the two never disagree on where a pixel's centre is."""
    cam = np.random.default_rng(0).uniform(0, 1, (SIZE, SIZE)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(cam)[None, None], size=(height, width), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    out = map_to_source(cam, TrimBox(height + 10, width, 10, height + 10, 0, width))
    assert np.abs(out[10:] - expected).max() < 1e-4  # torch computes positions in float32
    assert not out[:10].any()


@pytest.mark.parametrize(("cam", "box", "message"), [
    (np.zeros((2, 2, 2)), TrimBox(4, 4, 0, 4, 0, 4), "cam must be a non-empty 2-D array"),
    (np.zeros((0, 2)), TrimBox(4, 4, 0, 4, 0, 4), "cam must be a non-empty 2-D array"),
    (np.full((2, 2), np.nan), TrimBox(4, 4, 0, 4, 0, 4), "cam must hold finite values"),
    (np.zeros((2, 2)), TrimBox(4, 4, 0, 5, 0, 4), "box must lie inside its image"),
    (np.zeros((2, 2)), TrimBox(4, 4, 2, 2, 0, 4), "box must lie inside its image"),
])
def test_map_to_source_refuses(cam: np.ndarray, box: TrimBox, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        map_to_source(cam, box)


def _header(rows: int, columns: int, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in range(3))
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PID", "", "", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
    ds.Rows, ds.Columns = rows, columns
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("orientation", "expected"), [
    (["L", "F"], ["L", "F"]),  # the source's, which holds for the same pixel grid
    (["R", "FL"], ["R", "FL"]),
    ("", []),  # unknown: present and empty (type 2C)
    (["L"], []),
    (["X", "F"], []),
])
def test_segmentation_is_on_the_image_grid_with_its_values(orientation: object, expected: list[str]) -> None:
    header = _header(30, 20, PatientOrientation=orientation)
    activation = np.linspace(0, 1, 600, dtype=np.float32).reshape(30, 20)
    seg = build_heatmap_segmentation(header, header, activation, MODEL, "PNEUMONIA", 3, "f" * 64)
    assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (30, 20, 1)
    assert seg.StudyInstanceUID == header.StudyInstanceUID and seg.PatientID == "PID"
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == heatmap_segmentation_uids(
        header.SOPInstanceUID, header.StudyInstanceUID, MODEL, "f" * 64)
    picture_series, _ = heatmap_uids(header.SOPInstanceUID, header.StudyInstanceUID, MODEL)
    assert seg.SeriesInstanceUID not in (header.SeriesInstanceUID, picture_series)
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert list(seg.get("PatientOrientation") or []) == expected
    stored = seg.pixel_array.astype(np.float32) / MAX_FRACTIONAL_VALUE
    assert stored == pytest.approx(activation, abs=0.5 / MAX_FRACTIONAL_VALUE + 1e-6)


@pytest.mark.parametrize(("activation", "message"), [
    (np.zeros((30, 21), np.float32), "activation must have the image's 30 x 20 pixels"),
    (np.zeros((30, 20), np.uint8), "activation must be a float 2-D array"),
    (np.full((30, 20), 1.5, np.float32), r"activation must hold values in \[0, 1\]"),
])
def test_segmentation_refuses_a_map_off_the_image(activation: np.ndarray, message: str) -> None:
    header = _header(30, 20)
    with pytest.raises(ValueError, match=message):
        build_heatmap_segmentation(header, header, activation, MODEL, "PNEUMONIA", 1)


def test_segmentation_skips_only_a_check_already_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The map is built without highdicom's sort of every value (its range check, made earlier
    by build_heatmap_segmentation): the object is the one highdicom's own check would give."""
    import highdicom as hd

    from cxrtriage.dicom import heatmap_map

    header = _header(30, 20)
    activation = np.linspace(0, 1, 600, dtype=np.float32).reshape(30, 20)
    fast = build_heatmap_segmentation(header, header, activation, MODEL, "PNEUMONIA", 1)
    checks: list[object] = []
    original = hd.seg.Segmentation._check_and_cast_pixel_array.__func__  # type: ignore[attr-defined]

    def counted(cls: type, *args: object, **kwargs: object) -> object:
        checks.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(heatmap_map, "_ActivationSegmentation", hd.seg.Segmentation)
    monkeypatch.setattr(hd.seg.Segmentation, "_check_and_cast_pixel_array", classmethod(counted))
    checked = build_heatmap_segmentation(header, header, activation, MODEL, "PNEUMONIA", 1)
    assert len(checks) == 1  # highdicom's own check ran on this path, and only here
    assert fast.PixelData == checked.PixelData
    assert fast.SegmentsOverlap == checked.SegmentsOverlap == "NO"
    assert fast.MaximumFractionalValue == checked.MaximumFractionalValue
