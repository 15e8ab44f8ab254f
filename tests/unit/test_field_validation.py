"""The field validation's pieces on known values: groups, worst group, the prior-shift check,
the earliest-of-each-series holdout, and the weight average."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrtriage.models.data import Sample, holdout_split, series_of, split_earliest
from cxrtriage.models.ema import WeightAverage
from cxrtriage.models.field_validation import (
    accuracy_at_prevalence,
    group_table,
    groups_of,
    kind_of,
    parse_shifts,
    prior_shift,
    worst,
)


@pytest.mark.parametrize(("patient", "series"), [
    ("p-person1000", ("person", 1000)),
    ("n2-0383", ("NORMAL2-IM", 383)),
    ("im-0115", ("IM", 115)),
    ("scan42", ("other", None)),
])
def test_series_of_a_patient(patient, series):
    assert series_of(patient) == series


@pytest.mark.parametrize(("name", "kind"), [
    ("/d/PNEUMONIA/person12_bacteria_3.jpeg", "bacteria"),
    ("/d/PNEUMONIA/person12_virus_30.jpeg", "virus"),
    ("/d/NORMAL/NORMAL2-IM-0383-0001.jpeg", "NORMAL2-IM"),
    ("/d/NORMAL/IM-0115-0001.jpeg", "IM"),
])
def test_kind_of_a_sample(name, kind):
    from cxrtriage.models.data import patient_of

    assert kind_of(Sample(name, "x", patient_of(name))) == kind


def _series_samples() -> list[Sample]:
    out = [Sample(f"IM-{n:04d}-0001.jpeg", "NORMAL", f"im-{n:04d}") for n in range(100, 110)]
    out += [Sample(f"person{n}_bacteria_{k}.jpeg", "PNEUMONIA", f"p-person{n}")
            for n in range(1, 11) for k in range(2 if n <= 2 else 1)]  # persons 1 and 2: 2 images each
    return out


def test_earliest_holds_out_the_lowest_numbers_of_each_series_by_image_count():
    train, val = split_earliest(_series_samples(), 0.25)
    held = sorted({s.patient for s in val})
    # IM: 10 images, 25% -> 2 or 3 (round(2.5) = 2); person: 12 images, 25% -> 3 (persons 1, 2 = 4)
    assert held == ["im-0100", "im-0101", "p-person1", "p-person2"]
    assert not {s.patient for s in train} & set(held)
    assert len(train) + len(val) == len(_series_samples())


def test_earliest_ignores_the_order_of_the_samples_and_the_seed():
    samples = _series_samples()
    a = holdout_split(samples, "earliest", 0.25, seed=1)[1]
    b = holdout_split(list(reversed(samples)), "earliest", 0.25, seed=2)[1]
    assert sorted(s.path for s in a) == sorted(s.path for s in b)


def test_unknown_holdout_is_named():
    from cxrtriage.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="holdout must be one of"):
        holdout_split(_series_samples(), "latest", 0.2, seed=0)


Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.75, 0.4])
GROUP_A = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)


def test_group_table_scores_each_group_against_the_whole_other_class():
    rows = {(r["group"], r["class"]): r for r in group_table(Y, P, {"a": GROUP_A, "b": ~GROUP_A}, 0.5)}
    # group a positives (0.9, 0.8) rank above every negative: AUROC 1, sensitivity 1
    assert rows[("a", "positive")]["auroc"] == 1.0 and rows[("a", "positive")]["rate"] == 1.0
    # group b positives (0.3, 0.7) against negatives (0.1, 0.2, 0.75, 0.4): 2 + 3 of 8 pairs
    assert rows[("b", "positive")]["auroc"] == pytest.approx(5 / 8)
    # group b negatives (0.75, 0.4) below all positives (0.9, 0.8, 0.3, 0.7) in 2 + 3 of 8 pairs
    assert rows[("b", "negative")]["auroc"] == pytest.approx(5 / 8)
    assert rows[("b", "negative")]["rate_name"] == "specificity"
    assert rows[("b", "negative")]["rate"] == 0.5
    assert worst(list(rows.values()))["auroc"] == pytest.approx(5 / 8)


def test_groups_of_marks_series_earliest_and_padding():
    samples = [Sample("/d/IM-0115-0001.jpeg", "NORMAL", "im-0115"),
               Sample("/d/person3_virus_9.jpeg", "PNEUMONIA", "p-person3")]
    groups = groups_of(samples, earliest={"/d/IM-0115-0001.jpeg"}, trimmed=set())
    assert groups["kind:IM"].tolist() == [True, False]
    assert groups["kind:virus"].tolist() == [False, True]
    assert groups["earliest:yes"].tolist() == [True, False]
    assert groups["padding:none"].tolist() == [True, True]


@pytest.mark.parametrize(("prevalence", "expected"), [
    (0.5, 0.5 * 0.75 + 0.5 * 0.75),  # sensitivity 3/4, specificity 3/4 at 0.5
    (0.625, 0.75),
    (1.0, 0.75),
])
def test_accuracy_at_prevalence(prevalence, expected):
    assert accuracy_at_prevalence(Y, P, 0.5, prevalence) == pytest.approx(expected)


def test_prior_shift_reports_the_field_accuracy_and_the_best_threshold_there():
    y = np.array([1] * 8 + [0] * 2)
    p = np.array([0.9] * 7 + [0.45] + [0.5, 0.1])  # one negative at 0.5 scores above a positive
    out = prior_shift(y, p, threshold=0.4, prevalence=0.5, n_boot=200)
    assert out["set_prevalence"] == 0.8
    assert out["accuracy_at_threshold"] == pytest.approx(0.9)
    assert out["accuracy_at_field_prevalence"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert out["best_threshold_at_field_prevalence"] == pytest.approx(0.9)
    assert out["best_accuracy_at_field_prevalence"] == pytest.approx(0.5 * 7 / 8 + 0.5)
    low, high = out["accuracy_at_field_prevalence_95ci"]
    assert low <= out["accuracy_at_field_prevalence"] <= high


@pytest.mark.parametrize(("text", "shifts"), [
    ("none", []), ("", []), ("rotation, lines", ["rotation", "lines"]),
])
def test_parse_shifts(text, shifts):
    assert parse_shifts(text) == shifts


def test_parse_shifts_all_and_unknown():
    assert "combined" in parse_shifts("all")
    with pytest.raises(ValueError, match="tilt"):
        parse_shifts("rotation,tilt")


def test_weight_average_warms_up_then_decays():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    assert average.current_decay() == pytest.approx(1 / 10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # 0.1 * 0 + 0.9 * 1
    assert float(average.state["weight"]) == pytest.approx(0.9)
    average.steps = 1000
    average.update(model)  # decay capped at 0.9: 0.9 * 0.9 + 0.1 * 1
    assert float(average.state["weight"]) == pytest.approx(0.91)
    restored = WeightAverage(model, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 1001
    assert float(restored.averaged(model).weight.detach()) == pytest.approx(0.91)
    assert float(model.weight.detach()) == 1.0, "the model itself is untouched"


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_weight_average_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(1, 1), decay)
