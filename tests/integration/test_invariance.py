"""The shipped package must not care how a picture was encoded, and should care little how it was
acquired. Each DICOM file is made by the shifted validation's renderer and read back by the
worker's own step (`examine_file`); the reference is the same picture as a plain grayscale array.

Tolerances (flag probability, absolute), from measurements of the 1.2.0 package:
- every lossless encoding (8/12/16 bits, MONOCHROME1/2, uncompressed, RLE, JPEG-LS and
  JPEG 2000 lossless): 1e-3;
- lossy encodings (JPEG 2000 at 20:1, JPEG baseline at quality 85), resampling to a 160-1024 px
  detector, and aspect ratios 0.82 and 1.22 (squashed back to the square by preprocessing
  version 2; padded, version 1 moved a normal picture by ~0.10): 0.01;
- windows (fitted or clipping 1-99%), 80% of the stored range used without a window, power
  responses 0.8-1.25, a log response log1p(5x)/log1p(5): 0.05 (1.1.0's weights moved a normal
  picture by 0.56 under that log response; 1.2.0's fine-tuned member brought it to 0.03);
- known weaknesses, marked xfail(strict) so that fixing them has to update this file: a stronger
  log response (log1p(8x)/log1p(8)) and half the stored range without a window (a flat, grey
  picture) move a normal picture towards pneumonia by 0.10-0.12.
These are for pictures the model is sure of; a picture near the threshold moves more in
probability (a viral pneumonia at p = 0.79 moves by up to 0.3 under a clipping window).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless

from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square
from cxrtriage.models.shifted import LOSSLESS, Acquisition, render, serve
from tests.conftest import BUNDLED
from tests.factory import sample_pixels

BASE = Acquisition(bits=16, window="none", detector=224)
PICTURES = ("normal-1", "pneumonia-2")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    assert (BUNDLED / "manifest.json").is_file(), "the bundled model package is missing"
    return Classifier(BUNDLED)


def _picture(name: str) -> np.ndarray:
    return sample_pixels(name).astype(np.float32) / 255.0


def _reference(classifier: Classifier, gray: np.ndarray) -> float:
    return float(classifier.probabilities(fit_to_square(gray, classifier.input_size)[None])[0, 1])


def _served(classifier: Classifier, gray: np.ndarray, acq: Acquisition, folder: Path,
            jpeg_ls: bool = False) -> float:
    ds = render(gray, acq)
    if jpeg_ls:
        ds.compress(JPEGLSLossless)
    return float(classifier.probabilities(serve(ds, classifier.manifest, folder)[None])[0, 1])


def test_every_lossless_encoding_gives_the_same_probability(classifier, tmp_path):
    gray = _picture("pneumonia-2")
    size = max(gray.shape)
    reference = _reference(classifier, gray)
    got = {}
    for bits in (8, 12, 16):
        for monochrome1 in (False, True):
            for encoding in LOSSLESS:
                acq = Acquisition(bits=bits, monochrome1=monochrome1, encoding=encoding,
                                  window="none", detector=size)
                got[f"{bits} bit {'M1' if monochrome1 else 'M2'} {encoding}"] = _served(
                    classifier, gray, acq, tmp_path)
            acq = Acquisition(bits=bits, monochrome1=monochrome1, window="none", detector=size)
            got[f"{bits} bit {'M1' if monochrome1 else 'M2'} jpeg-ls"] = _served(
                classifier, gray, acq, tmp_path, jpeg_ls=True)
    off = {k: round(v - reference, 6) for k, v in got.items() if abs(v - reference) > 1e-3}
    assert not off, off


VARIATIONS = {
    0.01: {"j2k-lossy": replace(BASE, encoding="j2k-lossy"),
           "jpeg-baseline": replace(BASE, bits=8, encoding="jpeg-baseline"),
           "detector 160": replace(BASE, detector=160), "detector 512": replace(BASE, detector=512),
           "detector 1024": replace(BASE, detector=1024),
           "aspect 0.82": replace(BASE, aspect=0.82), "aspect 1.22": replace(BASE, aspect=1.22)},
    0.05: {"window fit": replace(BASE, range_use=0.7, offset=0.1, window="fit"),
           "window clip": replace(BASE, window="clip"),
           "80% of the range, no window": replace(BASE, range_use=0.8, offset=0.1),
           "gamma 0.8": replace(BASE, response="gamma", response_param=0.8),
           "gamma 1.25": replace(BASE, response="gamma", response_param=1.25),
           "log 5": replace(BASE, response="log", response_param=5.0)},
}


@pytest.mark.parametrize("picture", PICTURES)
@pytest.mark.parametrize("tolerance", sorted(VARIATIONS))
def test_acquisition_variations_stay_within_tolerance(classifier, tmp_path, picture, tolerance):
    gray = _picture(picture)
    size = max(gray.shape)
    reference = _reference(classifier, gray)
    moved = {}
    for name, acq in VARIATIONS[tolerance].items():
        if acq.detector == BASE.detector:
            acq = replace(acq, detector=size)
        moved[name] = round(_served(classifier, gray, acq, tmp_path) - reference, 4)
    assert all(abs(v) <= tolerance for v in moved.values()), moved


@pytest.mark.xfail(strict=True, reason="known weakness: a strong log response or a flat, grey "
                   "picture makes normal lungs look opaque (docs/evaluation, shifted validation by factor)")
@pytest.mark.parametrize("acq", [replace(BASE, response="log", response_param=8.0),
                                 replace(BASE, range_use=0.5, offset=0.25)], ids=["log 8", "half range"])
def test_known_weaknesses_leave_a_normal_picture_normal(classifier, tmp_path, acq):
    gray = _picture("normal-1")
    assert abs(_served(classifier, gray, acq, tmp_path) - _reference(classifier, gray)) <= 0.05
