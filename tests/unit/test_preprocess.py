import numpy as np
import pytest
from pydicom.dataset import Dataset

from cxrtriage.dicom.preprocess import _window, dataset_to_gray
from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.model_input import fit_to_square, preprocessing_changes, trim_padding

RAMP = np.arange(256, dtype=np.uint8).reshape(16, 16)


@pytest.mark.parametrize(("center", "width", "function", "values", "expected"), [
    (128, 256, "LINEAR", [0, 127.5, 255], [0.0, 0.5, 1.0]),
    (100, 50, "LINEAR", [0, 74.5, 124.5, 300], [0.0, 0.0, 1.0, 1.0]),
    (100, 50, "LINEAR_EXACT", [75, 100, 125], [0.0, 0.5, 1.0]),
    (100, 50, "SIGMOID", [100], [0.5]),
])
def test_window(center, width, function, values, expected):
    out = _window(np.array(values, dtype=float), center, width, function)
    assert out == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("kwargs", "first", "last"), [
    ({}, 0.0, 1.0),
    ({"monochrome1": True}, 0.0, 1.0),  # stored inverted, displayed the same
])
def test_full_stored_range_and_monochrome1(kwargs, first, last):
    gray = dataset_to_gray(wrap_image(RAMP, **kwargs))
    assert gray.flat[0] == pytest.approx(first) and gray.flat[-1] == pytest.approx(last)
    assert gray == pytest.approx(RAMP / 255.0, abs=1e-6)


def test_sixteen_bit_matches_eight_bit():
    wide = (RAMP.astype(np.uint16) * 257).astype(np.uint16)
    assert dataset_to_gray(wrap_image(wide)) == pytest.approx(RAMP / 255.0, abs=1e-6)


def test_window_and_rescale_are_applied():
    ds = wrap_image(RAMP, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=200)
    gray = dataset_to_gray(ds)
    # value v -> 2v - 100; window [0, 200) maps 50 -> 0 and 150 -> 1 (approximately)
    assert gray.flat[50] == pytest.approx(0.0, abs=0.01) and gray.flat[150] == pytest.approx(1.0, abs=0.01)


def test_voi_lut_sequence_is_preferred_to_window():
    ds = wrap_image(RAMP, WindowCenter=10, WindowWidth=2)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: an inverting LUT
    ds.VOILUTSequence = [item]
    assert dataset_to_gray(ds) == pytest.approx(1.0 - RAMP / 255.0, abs=1e-6)


def test_pixel_padding_is_black():
    ds = wrap_image(RAMP, PixelPaddingValue=255)
    assert dataset_to_gray(ds).flat[-1] == 0.0


@pytest.mark.parametrize("shape", [(20, 10), (10, 20), (40, 33), (20, 20)])
def test_fit_to_square_squashes_like_the_training_pictures(shape):
    """Since preprocessing version 2, no padding; a left-to-right ramp stays a full ramp."""
    ramp = np.tile(np.linspace(0.0, 1.0, shape[1], dtype=np.float32), (shape[0], 1))
    out = fit_to_square(ramp, 20)
    assert out.shape == (20, 20)
    assert out[:, 0].max() < 0.1 and out[:, -1].min() > 0.9, "no black bars"
    assert np.allclose(out, out[0:1, :], atol=1e-5), "every row the same ramp"


def _picture(rows: int = 60, cols: int = 50) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.1, 0.9, (rows, cols)).astype(np.float32)


def _padded(picture: np.ndarray, top: int, bottom: int, left: int, right: int, value: float) -> np.ndarray:
    return np.pad(picture, ((top, bottom), (left, right)), constant_values=value)


@pytest.mark.parametrize(("top", "bottom", "left", "right", "value"), [
    (0, 0, 6, 5, 0.0),  # padded to a wider detector, black
    (7, 7, 0, 0, 1.0),  # padded to a taller detector, white (MONOCHROME1 stored zeros)
    (3, 0, 2, 9, 0.5),  # an uneven grey frame
    (0, 0, 0, 0, 0.0),  # nothing to trim
])
def test_padding_is_trimmed_back_to_the_picture(top, bottom, left, right, value):
    picture = _picture()
    assert np.array_equal(trim_padding(_padded(picture, top, bottom, left, right, value)), picture)


def test_trimmed_padding_reaches_the_model_as_the_picture_itself():
    picture = _picture(50, 50)
    padded = _padded(picture, 0, 0, 6, 5, 0.0) + np.float32(0.003)  # within the tolerance
    assert np.allclose(fit_to_square(padded, 32), fit_to_square(picture + np.float32(0.003), 32))


@pytest.mark.parametrize(("image", "why"), [
    (np.zeros((40, 40), np.float32), "a blank image is left to the gate"),
    (_padded(_picture(20, 50), 21, 21, 0, 0, 0.0), "bands over a third of a side are content"),
    (_padded(_picture(), 1, 1, 1, 1, 0.0), "a single uniform edge line is kept"),
    (_padded(_picture(), 0, 0, 6, 0, 0.0) + np.linspace(0, 0.1, 60, dtype=np.float32)[:, None],
     "a band with a gradient along it is not padding"),
])
def test_what_is_not_padding_is_kept(image, why):
    assert trim_padding(image).shape == image.shape, why


@pytest.mark.parametrize("mutate", [
    lambda ds: delattr(ds, "PixelData"),
    lambda ds: setattr(ds, "Rows", 60000) or setattr(ds, "Columns", 60000),
    lambda ds: setattr(ds, "PhotometricInterpretation", "HSV"),
])
def test_input_contract_refuses_before_decoding(mutate):
    ds = wrap_image(RAMP)
    mutate(ds)
    with pytest.raises(InvalidInputError):
        dataset_to_gray(ds)


@pytest.mark.parametrize(("after", "up_to", "versions"), [
    ("1", "3", ["2", "3"]), ("2", "3", ["3"]), ("3", "3", []), ("1", "2", ["2"]),
])
def test_preprocessing_changes_are_those_after_a_version(after, up_to, versions):
    assert list(preprocessing_changes(after, up_to)) == versions
