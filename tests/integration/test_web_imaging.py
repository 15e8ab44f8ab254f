"""The study page's overlay is recovered from the Grad-CAM image the worker stored: it must be
the map the worker computed, so a change to the worker's blending breaks this test."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.models.gradcam import gradcam, overlay
from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square
from cxrtriage.web.imaging import cam_from_overlay
from tests.factory import sample_pixels


@pytest.mark.parametrize("sample", ["pneumonia-1", "normal-1"])
def test_cam_recovered_from_the_stored_overlay(tiny_package, sample) -> None:
    classifier = Classifier(tiny_package)
    image = fit_to_square(sample_pixels(sample).astype(np.float32) / 255.0, classifier.input_size)
    expected = gradcam(classifier, image)
    recovered = cam_from_overlay(overlay(classifier, image))
    assert recovered.shape == expected.shape
    assert np.abs(recovered - expected).max() <= 2 / 127.5  # uint8 rounding of two channels
    assert expected.max() > 0.5  # a map with something in it, or the comparison proves nothing
