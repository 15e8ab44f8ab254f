"""The operating point is chosen on the set asked for, not silently on another."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.models import metrics
from cxrtriage.models.operating_point import CHOICE_SETS, choose, probabilities
from tests.factory import flag_logits


@pytest.fixture()
def measured() -> dict:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    plain = np.clip(0.1 + 0.8 * y + rng.normal(0, 0.05, 400), 0.01, 0.99)
    # The harder set: the normals' scores rise, as they do for unseen patients.
    harder = np.clip(plain + (1 - y) * rng.uniform(0.3, 0.9, 400), 0.01, 0.99)
    return {"flag_index": 1, "y": y, "logits": flag_logits(plain),
            "shifted_y": y, "shifted_logits": flag_logits(plain),
            "population_y": y, "population_logits": flag_logits(harder)}


def test_youden_on_the_population_shift_is_youden_of_those_scores(measured):
    temperature, threshold = choose(measured, "youden", False, 1.0, on="population")
    harder = probabilities(measured["population_logits"], 1.0, 1)
    assert temperature == 1.0
    assert threshold == pytest.approx(metrics.choose_threshold(measured["y"], harder, "youden"))
    _, on_shifted = choose(measured, "youden", False, 1.0, on="shifted")
    assert threshold > on_shifted, "the risen normals push the threshold up"


def test_every_choice_set_names_where_and_why():
    assert set(CHOICE_SETS) == {"shifted", "population"}
    for where, why in CHOICE_SETS.values():
        assert where.startswith("the ") and why
