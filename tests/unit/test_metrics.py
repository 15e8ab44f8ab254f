import numpy as np
import pytest
from sklearn import metrics as sk

from cxrtriage.models import metrics
from cxrtriage.models.field_validation import accuracy_at_prevalence

CASES = [
    (np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])),
    (np.array([0, 1, 1, 0, 1, 0, 1]), np.array([0.2, 0.2, 0.9, 0.5, 0.5, 0.1, 0.7])),  # ties
    (np.random.default_rng(1).integers(0, 2, 300), np.random.default_rng(2).random(300)),
]


@pytest.mark.parametrize(("y", "s"), CASES)
def test_auroc_matches_sklearn(y, s):
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))


@pytest.mark.parametrize(("y", "s"), CASES)
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_threshold_metrics_match_sklearn(y, s, threshold):
    pred = (s >= threshold).astype(int)
    got = metrics.at_threshold(y, s, threshold)
    assert got.accuracy == pytest.approx(sk.accuracy_score(y, pred))
    assert got.sensitivity == pytest.approx(sk.recall_score(y, pred, zero_division=0))
    assert got.precision == pytest.approx(sk.precision_score(y, pred, zero_division=0))
    assert got.f1 == pytest.approx(sk.f1_score(y, pred, zero_division=0))
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (got.tn, got.fp, got.fn, got.tp) == (tn, fp, fn, tp)
    assert got.specificity == pytest.approx(tn / (tn + fp))


def test_youden_threshold_matches_sklearn_roc():
    y, s = CASES[2]
    fpr, tpr, thr = sk.roc_curve(y, s)
    assert metrics.choose_threshold(y, s, "youden") == pytest.approx(thr[np.argmax(tpr - fpr)])


def test_target_sensitivity_rule():
    y, s = CASES[2]
    t = metrics.choose_threshold(y, s, "sensitivity:0.9")
    assert metrics.at_threshold(y, s, t).sensitivity >= 0.9


def test_accuracy_at_prevalence_rule_is_the_best_of_every_threshold():
    y, s = CASES[2]
    t = metrics.choose_threshold(y, s, "accuracy@0.625")
    best = max(accuracy_at_prevalence(y, s, c, 0.625) for c in np.unique(s))
    assert accuracy_at_prevalence(y, s, t, 0.625) == pytest.approx(best)
    assert metrics.choose_threshold(y, s, "accuracy@0.99") <= t, "more positives, a lower flag"


def test_bootstrap_interval_contains_point_estimate():
    y, s = CASES[2]
    auc, low, high = metrics.bootstrap_auroc(y, s, n_boot=200)
    assert low <= auc <= high


def test_ece_of_perfect_calibration_is_small():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert metrics.expected_calibration_error(y, p) < 0.02
    assert metrics.expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.1
