"""The study page's overlay is recovered from the heat map image the worker stored: it must be
the map the worker computed, so a change to the worker's blending breaks this test."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.models.heatmap import overlay
from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square
from cxrtriage.web.imaging import cam_from_overlay
from tests.conftest import BUNDLED
from tests.factory import sample_pixels


@pytest.mark.parametrize("sample", ["pneumonia-1", "normal-1"])
def test_cam_recovered_from_the_stored_overlay(sample) -> None:
    classifier = Classifier(BUNDLED)  # a trained model: random weights can leave the map empty
    image = fit_to_square(sample_pixels(sample).astype(np.float32) / 255.0, classifier.input_size)
    expected = classifier.predict_with_heatmaps(["x"], image[None])[1][0]
    recovered = cam_from_overlay(overlay(image, expected))
    assert recovered.shape == expected.shape
    assert np.abs(recovered - expected).max() <= 2 / 127.5  # uint8 rounding of two channels
    assert expected.max() > 0.5  # a map with something in it, or the comparison proves nothing
