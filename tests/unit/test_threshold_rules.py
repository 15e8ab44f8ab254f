"""The rule comparison judges each threshold on every set, and splits the pooled shift by shift."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.models.field_validation import accuracy_at_prevalence
from cxrtriage.models.metrics import choose_threshold
from cxrtriage.models.population_shift import SHIFTS
from cxrtriage.models.threshold_rules import CHOSEN_ON, RULES, compare, markdown, scored_sets
from tests.factory import flag_logits


@pytest.fixture()
def measured() -> dict:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    plain = np.clip(0.15 + 0.7 * y + rng.normal(0, 0.1, 300), 0.01, 0.99)
    # Each shift raises the normals' scores by its own amount; `combined` (last) the most.
    shifted = [np.clip(plain + (1 - y) * rng.uniform(0, 0.1 * (i + 1), 300), 0.01, 0.99)
               for i in range(len(SHIFTS))]
    return {"flag_index": 1, "y": y, "logits": flag_logits(plain), "shifted_y": y,
            "shifted_logits": flag_logits(plain), "population_y": np.tile(y, len(SHIFTS)),
            "population_logits": flag_logits(np.concatenate(shifted))}


def test_each_shift_is_its_own_slice_of_the_pooled_scores(measured):
    sets = scored_sets(measured, temperature=1.0)
    pooled = sets["pooled"][1]
    for i, shift in enumerate(SHIFTS):
        assert np.array_equal(sets[shift][1], pooled[i * 300:(i + 1) * 300])
    assert sets["combined"][1].mean() > sets["rotation"][1].mean()


def test_every_rule_on_every_set_is_judged_on_every_set(measured):
    sets = scored_sets(measured, temperature=1.0)
    rows = compare(sets, prevalence=0.625)
    assert len(rows) == len(RULES) * len(CHOSEN_ON)
    row = next(r for r in rows if r["rule"] == "youden" and r["on"] == "combined")
    assert row["threshold"] == choose_threshold(*sets["combined"], "youden")
    assert row["accuracy"]["validation"] == accuracy_at_prevalence(*sets["validation"],
                                                                   row["threshold"], 0.625)
    assert row["worst_shift"] == min(row["accuracy"][s] for s in SHIFTS)
    on_plain = next(r for r in rows if r["rule"] == "youden" and r["on"] == "validation")
    assert on_plain["threshold"] < row["threshold"], "the risen normals push the threshold up"
    assert on_plain["accuracy"]["combined"] < row["accuracy"]["combined"]
    table = markdown(rows)
    assert table.count("\n| ") == len(rows) + 2 and "worst shift" in table
