"""The review app's pictures: each stored image in its true geometry, and the heat map the worker
stored laid over it in register. The overlay is recovered from the heat map image the worker
stored: it must be the map the worker computed, so a change to the worker's blending, or to the
model's framing (trim, then squash), breaks these tests."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from cxrtriage.dicom.geometry import trim_box
from cxrtriage.dicom.heatmap_map import build_heatmap_segmentation, map_to_source
from cxrtriage.dicom.heatmap_writer import build_heatmap
from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.sr_header import clean_header
from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.domain import ModelInfo
from cxrtriage.models.heatmap import overlay
from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square
from cxrtriage.web.imaging import cam_from_overlay, render_heatmap, render_instance
from tests.conftest import BUNDLED
from tests.factory import SENTINELS, sample_pixels

MODEL = ModelInfo("test-model", "1.0.0", "tests", generate_uid(), "ab" * 32)
SQUARE = 64  # the model's input size in these tests
BAND = 40  # rows of black padding above and below the picture


@pytest.mark.parametrize("sample", ["pneumonia-1", "normal-1"])
def test_cam_recovered_from_the_stored_overlay(sample) -> None:
    classifier = Classifier(BUNDLED)  # a trained model: random weights can leave the map empty
    image = fit_to_square(sample_pixels(sample).astype(np.float32) / 255.0, classifier.input_size)
    expected = classifier.predict_with_heatmaps(["x"], image[None])[1][0]
    recovered = cam_from_overlay(overlay(image, expected))
    assert recovered.shape == expected.shape
    assert np.abs(recovered - expected).max() <= 2 / 127.5  # uint8 rounding of two channels
    assert expected.max() > 0.5  # a map with something in it, or the comparison proves nothing


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(data)))


def _padded_image(folder: Path, spacing: list[float]) -> tuple[Path, np.ndarray]:
    """A 224 x 224 picture with black bands above and below (304 x 224 stored), whose pixels are
    `spacing` (rows, columns) mm apart."""
    picture = np.random.default_rng(5).integers(76, 204, (224, 224), dtype=np.uint8)
    stored = np.pad(picture, ((BAND, BAND), (0, 0)))
    ds = wrap_image(stored, study_uid=generate_uid(), PixelSpacing=spacing, **SENTINELS)
    path = folder / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, stored


@pytest.mark.parametrize(("spacing", "shape", "full"), [
    ([0.1, 0.1], (304, 224), (304, 224)),
    ([0.1, 0.2], (304, 448), (304, 448)),  # columns twice as far apart: twice as wide
    ([0.4, 0.2], (608, 224), (608, 224)),
])
def test_each_image_keeps_its_true_proportions(tmp_path: Path, spacing: list[float], shape: tuple[int, int],
                                               full: tuple[int, int]) -> None:
    path, _ = _padded_image(tmp_path, spacing)
    assert _png(render_instance(str(path))).shape == shape
    assert _png(render_instance(str(path), None)).shape == full
    small = _png(render_instance(str(path), 64))
    assert max(small.shape) == 64
    assert small.shape[0] / small.shape[1] == pytest.approx(shape[0] / shape[1], rel=0.05)


def test_the_stored_heat_map_lies_over_the_trimmed_picture(tmp_path: Path) -> None:
    """A map with one hot spot in the model's square comes back at the same place on the image as
    shown: inside the picture, none over the padding the model never saw, the spacing honoured."""
    path, stored = _padded_image(tmp_path, [0.1, 0.2])
    ds = pydicom.dcmread(path)
    square = fit_to_square(dataset_to_gray(ds), SQUARE)  # what the model saw: bands trimmed, squashed
    rows, columns = np.mgrid[0:SQUARE, 0:SQUARE]
    spot = (16, 48)  # row, column in the model's square
    cam = np.exp(-((rows - spot[0]) ** 2 + (columns - spot[1]) ** 2) / (2 * 3.0**2)).astype(np.float32)
    heatmap = build_heatmap(clean_header(ds), overlay(square, cam), MODEL, 1)
    heatmap_path = tmp_path / "heatmap.dcm"
    heatmap.save_as(heatmap_path, enforce_file_format=True)

    image = _png(render_instance(str(path)))
    rgba = _png(render_heatmap(str(heatmap_path), str(path)))
    assert rgba.shape == (*image.shape, 4) == (304, 448, 4)
    alpha = rgba[..., 3]
    assert alpha[:BAND].max() == 0 and alpha[BAND + 224:].max() == 0  # nothing over the padding
    peak = np.unravel_index(np.argmax(alpha), alpha.shape)
    # The picture is rows 40..264 and every column (stretched twice: spacing 0.1 x 0.2 mm).
    expected = (BAND + (spot[0] + 0.5) / SQUARE * 224, (spot[1] + 0.5) / SQUARE * 448)
    assert abs(peak[0] - expected[0]) <= 4 and abs(peak[1] - expected[1]) <= 8, (peak, expected)
    assert stored.shape == (304, 224)


def test_the_map_as_data_lies_where_the_picture_of_it_does(tmp_path: Path) -> None:
    """The worker's fractional Segmentation (the map on the image's own grid, no colours to read
    back) is shown at the same place as the Secondary Capture's, nothing over the padding."""
    path, _ = _padded_image(tmp_path, [0.1, 0.2])
    ds = pydicom.dcmread(path)
    gray = dataset_to_gray(ds)
    square = fit_to_square(gray, SQUARE)
    rows, columns = np.mgrid[0:SQUARE, 0:SQUARE]
    spot = (16, 48)
    cam = np.exp(-((rows - spot[0]) ** 2 + (columns - spot[1]) ** 2) / (2 * 3.0**2)).astype(np.float32)
    picture = build_heatmap(clean_header(ds), overlay(square, cam), MODEL, 1)
    picture_path = tmp_path / "heatmap.dcm"
    picture.save_as(picture_path, enforce_file_format=True)
    seg = build_heatmap_segmentation(clean_header(ds), ds, map_to_source(cam, trim_box(gray)), MODEL,
                                     "PNEUMONIA", 1)
    seg_path = tmp_path / "heatmap-seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)

    from_picture = _png(render_heatmap(str(picture_path), str(path)))[..., 3]
    from_data = _png(render_heatmap(None, str(path), map_path=str(seg_path)))[..., 3]
    assert from_data.shape == from_picture.shape == (304, 448)
    assert from_data[:BAND].max() == 0 and from_data[BAND + 224:].max() == 0
    peak = np.unravel_index(np.argmax(from_data), from_data.shape)
    expected = np.unravel_index(np.argmax(from_picture), from_picture.shape)
    assert abs(peak[0] - expected[0]) <= 2 and abs(peak[1] - expected[1]) <= 4, (peak, expected)
