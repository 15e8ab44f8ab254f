"""Binary classification metrics, computed with NumPy so they can be checked against scikit-learn."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same length, got {y.size} and {s.size}")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError("y_true must contain only 0 and 1")
    return y, s


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties count one half)."""
    y, s = _check(y_true, scores)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds, highest threshold first."""
    y, s = _check(y_true, scores)
    thresholds = np.unique(s)[::-1]
    tpr = np.array([((s >= t) & (y == 1)).sum() for t in thresholds]) / max(y.sum(), 1)
    fpr = np.array([((s >= t) & (y == 0)).sum() for t in thresholds]) / max((1 - y).sum(), 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thresholds]


def precision_recall_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = _check(y_true, scores)
    thresholds = np.unique(s)[::-1]
    tp = np.array([((s >= t) & (y == 1)).sum() for t in thresholds], dtype=np.float64)
    predicted = np.array([(s >= t).sum() for t in thresholds], dtype=np.float64)
    return tp / np.maximum(predicted, 1), tp / max(y.sum(), 1)


@dataclass(frozen=True)
class ThresholdMetrics:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def at_threshold(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> ThresholdMetrics:
    y, s = _check(y_true, scores)
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    tn = int((~pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    sens, prec = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return ThresholdMetrics(threshold, tp, fp, tn, fn, _ratio(tp + tn, len(y)), sens,
                            _ratio(tn, tn + fp), prec, _ratio(2 * prec * sens, prec + sens))


def bootstrap_auroc(y_true: np.ndarray, scores: np.ndarray, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """AUROC with a percentile bootstrap interval over resampled images."""
    y, s = _check(y_true, scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            values.append(roc_auc(y[idx], s[idx]))
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return roc_auc(y, s), float(low), float(high)


def bootstrap_metric(y_true: np.ndarray, scores: np.ndarray, threshold: float, name: str,
                     n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    y, s = _check(y_true, scores)
    rng = np.random.default_rng(seed)
    values = [getattr(at_threshold(y[i], s[i], threshold), name)
              for i in (rng.integers(0, len(y), len(y)) for _ in range(n_boot))]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the positive-class probability over equal-width bins."""
    y, p = _check(y_true, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    y, p = _check(y_true, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [(float(p[which == b].mean()), float(y[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, rule: str) -> float:
    """`youden` maximises sensitivity + specificity - 1; `sensitivity:0.95` is the highest
    threshold that keeps sensitivity at or above the target; `accuracy@0.625` maximises the
    accuracy the same sensitivity and specificity give where 62.5% are positive."""
    y, s = _check(y_true, scores)
    fpr, tpr, thresholds = roc_curve(y, s)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if rule.startswith("sensitivity:"):
        target = float(rule.split(":", 1)[1])
        ok = np.nonzero(tpr >= target)[0]
        return float(thresholds[ok[0]]) if len(ok) else float(thresholds[-1])
    if rule.startswith("accuracy@"):
        prevalence = float(rule.split("@", 1)[1])
        return float(thresholds[int(np.argmax(prevalence * tpr + (1 - prevalence) * (1 - fpr)))])
    raise ValueError("threshold rule must be 'youden', 'sensitivity:<value>' or "
                     f"'accuracy@<prevalence>', got {rule!r}")


def summarize(y: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Every figure we report, at one threshold, with 95% bootstrap intervals."""
    auroc, low, high = bootstrap_auroc(y, probs)
    at = at_threshold(y, probs, threshold)
    out: dict[str, Any] = {"n_images": int(len(y)), "n_positive": int(y.sum()),
                           "auroc": auroc, "auroc_95ci": [low, high],
                           "ece": expected_calibration_error(y, probs), **at.as_dict()}
    for name in ("accuracy", "sensitivity", "specificity"):
        out[f"{name}_95ci"] = list(bootstrap_metric(y, probs, threshold, name))
    return out
