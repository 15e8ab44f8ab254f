"""The shifted validation's recipes: validated eagerly, drawn deterministically, rendered as DICOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.models.augment import AugmentConfig, augment_batch
from cxrtriage.models.data import Sample
from cxrtriage.models.shifted import Acquisition, draw_acquisition, factor_levels, plan, render


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"response": "sigmoid"}, "response"),
    ({"window": "auto"}, "window"),
    ({"bits": 10}, "bits"),
    ({"encoding": "jpeg-ls"}, "encoding"),
    ({"encoding": "jpeg-baseline", "bits": 12}, "jpeg-baseline"),
    ({"range_use": 0.5, "offset": 0.7}, "range_use"),
])
def test_bad_recipes_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Acquisition(**kwargs)


def test_recipes_depend_only_on_seed_and_file_name():
    samples = [Sample(f"/data/NORMAL/IM-{i:04d}-0001.jpeg", "NORMAL", f"im-{i}") for i in range(20)]
    first = plan(samples, 2, seed=7)
    assert first == plan(samples, 2, seed=7)
    assert first != plan(samples, 2, seed=8)
    moved = [Sample("/elsewhere/" + s.path.rsplit("/", 1)[1], s.label, s.patient) for s in samples]
    assert [r for _, r in plan(moved, 2, seed=7)] == [r for _, r in first]
    assert plan(samples[5:6], 2, seed=7) == [(0, r) for _, r in first[10:12]]


def test_draws_cover_every_level():
    rng = np.random.default_rng(0)
    levels = [factor_levels(draw_acquisition(rng)) for _ in range(400)]
    expected = {"bits": {"8", "12", "16"}, "window": {"none", "fit", "clip"},
                "photometric": {"MONOCHROME1", "MONOCHROME2"}, "aspect": {"1", "0.82", "1.22"},
                "response": {"linear", "gamma", "log"}, "range": {"full", "partial"},
                "encoding": {"explicit", "rle", "j2k-lossless", "j2k-lossy", "jpeg-baseline"}}
    for factor, wanted in expected.items():
        assert {lv[factor] for lv in levels} == wanted, factor


@pytest.mark.parametrize(("acq", "shape"), [
    (Acquisition(aspect=0.82, detector=200), (200, 164)),
    (Acquisition(aspect=1.22, detector=244, bits=12), (200, 244)),
    (Acquisition(detector=100, bits=16, monochrome1=True), (100, 100)),
])
def test_render_keeps_the_picture(acq, shape):
    gray = np.tile(np.linspace(0.0, 1.0, 200, dtype=np.float32), (200, 1))
    ds = render(gray, acq)
    assert (ds.Rows, ds.Columns) == shape
    assert ds.BitsStored == acq.bits and ds.PhotometricInterpretation == (
        "MONOCHROME1" if acq.monochrome1 else "MONOCHROME2")
    back = dataset_to_gray(ds)
    assert back[:, 0].mean() < 0.05 and back[:, -1].mean() > 0.95, "dark left, bright right"


def test_partial_range_without_window_lowers_contrast_and_a_window_restores_it():
    gray = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    flat = dataset_to_gray(render(gray, Acquisition(range_use=0.5, offset=0.25, window="none", bits=12)))
    fitted = dataset_to_gray(render(gray, Acquisition(range_use=0.5, offset=0.25, window="fit", bits=12)))
    assert flat.max() - flat.min() == pytest.approx(0.5, abs=0.02)
    assert fitted.max() - fitted.min() == pytest.approx(1.0, abs=0.02)


def test_acquisition_augmentation_off_by_default_draws_nothing():
    images = torch.rand(4, 1, 32, 32)
    plain = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(3))
    again = augment_batch(images, AugmentConfig(aspect=0.0), torch.Generator().manual_seed(3))
    assert torch.equal(plain, again)
    shifted = augment_batch(images, AugmentConfig(aspect=1.0, response=1.0, window=1.0, resample=1.0,
                                                  noise=0.01), torch.Generator().manual_seed(3))
    assert shifted.shape == images.shape and not torch.equal(shifted, plain)
    assert float(shifted.min()) >= 0.0 and float(shifted.max()) <= 1.0
