"""The shipped model: verified weights, predictions equal to those recorded when it was packaged,
and a card that says what it was trained on and how it was measured."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square, load_gray
from tests.conftest import BUNDLED


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    assert (BUNDLED / "manifest.json").is_file(), "the bundled model package is missing"
    return Classifier(BUNDLED)


def test_predictions_match_those_recorded_at_packaging(classifier):
    recorded = classifier.manifest.regression["predictions"]
    assert len(recorded) >= 4
    for relative, expected in recorded.items():
        image = fit_to_square(load_gray(BUNDLED / relative), classifier.input_size)
        got = classifier.predict([relative], image[np.newaxis])[0].probabilities
        assert got == pytest.approx(expected, abs=1e-5), relative


def test_manifest_and_card_describe_the_model(classifier):
    m = classifier.manifest
    assert m.labels == ["NORMAL", "PNEUMONIA"] and m.flag_label == "PNEUMONIA"
    assert m.metrics["validation"]["auroc_95ci"][0] <= m.metrics["validation"]["auroc"]
    card = (BUNDLED / "MODEL_CARD.md").read_text()
    for needed in ("CC BY 4.0", "doi:10.17632/rscbjbr9sj.2", "pediatric", f"{m.threshold:.4f}",
                   "Limitations", "from scratch"):
        assert needed in card, needed
    assert json.loads((BUNDLED / "training_log.json").read_text())


def test_package_fits_the_size_budget():
    total = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert total < 50 * 1024 * 1024
