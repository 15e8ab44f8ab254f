"""The field validation (issue 20): figures that should rank candidates the way unseen patients do.

Random held-out patients from the same batches as training are saturated (AUROC 0.998 for a
model that scored 0.970 on the withheld split). This module adds, for any set of held-out
samples:

- **groups**: each series of each class (normals of the `IM` and `NORMAL2-IM` series, bacterial
  and viral pneumonias) scored against all of the other class, whether the patient is among the
  earliest of its series (`data.split_earliest`), and whether the picture had padding trimmed.
  The worst group is reported beside the average;
- **the population-shift set** (`population_shift.py`), one column per shift;
- **a prior-shift check**: accuracy at the package's threshold at the withheld split's
  prevalence (62.5% pneumonia, against the training split's 74.3%), and the threshold that
  would be best there.

The data carry no view and no original size (every picture is a 224 px square, AP), so those
groups cannot be formed; DATA.md says so.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cxrtriage.models import metrics
from cxrtriage.models.data import Sample, discover, series_of, split_earliest
from cxrtriage.models.metrics import summarize
from cxrtriage.models.model_input import PREPROCESSING_VERSION, fit_to_square, load_gray, trim_padding
from cxrtriage.models.population_shift import POPULATION_SHIFT_VERSION, SHIFTS, apply_shift, shift_rng

if TYPE_CHECKING:
    from cxrtriage.models.inference import Classifier

logger = logging.getLogger(__name__)

FIELD_PREVALENCE = 0.625  # the withheld official test split: 390 of 624 images are pneumonia
TRAINING_PREVALENCE = 3875 / 5216  # the training split


def kind_of(sample: Sample) -> str:
    """The group a sample belongs to within its class: its series for normals, the kind of
    pneumonia (from the file name) for pneumonias."""
    name = Path(sample.path).name.lower()
    for kind in ("bacteria", "virus"):
        if f"_{kind}_" in name:
            return kind
    return series_of(sample.patient)[0]


def groups_of(samples: list[Sample], earliest: set[str] | None = None,
              trimmed: set[str] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks, one per group: `kind:<series or kind>`, `earliest:yes|no` (the path is in
    `earliest`), `padding:trimmed|none` (the path is in `trimmed`)."""
    kinds = np.array([kind_of(s) for s in samples])
    out = {f"kind:{k}": kinds == k for k in sorted(set(kinds.tolist()))}
    for name, chosen in (("earliest", earliest), ("padding", trimmed)):
        if chosen is None:
            continue
        inside = np.array([s.path in chosen for s in samples], dtype=bool)
        yes, no = ("yes", "no") if name == "earliest" else ("trimmed", "none")
        out[f"{name}:{yes}"], out[f"{name}:{no}"] = inside, ~inside
    return out


def group_table(y: np.ndarray, probs: np.ndarray, groups: dict[str, np.ndarray],
                threshold: float) -> list[dict[str, Any]]:
    """Per group and class: AUROC of the group's images of that class against every image of
    the other class, and the class's own rate at the threshold (sensitivity for pneumonias,
    specificity for normals). A group with both classes gives two rows."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    rows = []
    for name, mask in groups.items():
        for positive in (1, 0):
            members = mask & (y == positive)
            if not members.any() or not (y == 1 - positive).any():
                continue
            keep = members | (y == 1 - positive)
            flagged = probs[members] >= threshold
            rate = float(flagged.mean() if positive else (~flagged).mean())
            rows.append({"group": name, "class": "positive" if positive else "negative",
                         "n": int(members.sum()), "auroc": metrics.roc_auc(y[keep], probs[keep]),
                         "rate_name": "sensitivity" if positive else "specificity", "rate": rate})
    return rows


def worst(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the lowest AUROC."""
    return min(rows, key=lambda r: r["auroc"])


def accuracy_at_prevalence(y: np.ndarray, probs: np.ndarray, threshold: float,
                           prevalence: float) -> float:
    """Accuracy the same sensitivity and specificity give at another prevalence."""
    at = metrics.at_threshold(y, probs, threshold)
    return prevalence * at.sensitivity + (1 - prevalence) * at.specificity


def prior_shift(y: np.ndarray, probs: np.ndarray, threshold: float,
                prevalence: float = FIELD_PREVALENCE, n_boot: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """Accuracy at the threshold at this set's and at the field's prevalence (with a bootstrap
    interval), the threshold that maximises accuracy at the field's prevalence on this set, and
    the accuracy it gives (optimistic: chosen and measured on the same images)."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            values.append(accuracy_at_prevalence(y[idx], probs[idx], threshold, prevalence))
    low, high = np.percentile(values, [2.5, 97.5])
    best = metrics.choose_threshold(y, probs, f"accuracy@{prevalence}")
    return {"prevalence": prevalence, "set_prevalence": float(y.mean()),
            "accuracy_at_threshold": metrics.at_threshold(y, probs, threshold).accuracy,
            "accuracy_at_field_prevalence": accuracy_at_prevalence(y, probs, threshold, prevalence),
            "accuracy_at_field_prevalence_95ci": [float(low), float(high)],
            "best_threshold_at_field_prevalence": best,
            "best_accuracy_at_field_prevalence": accuracy_at_prevalence(y, probs, best, prevalence)}


def trimmed_paths(samples: list[Sample]) -> set[str]:
    """The samples whose picture has uniform bands that preprocessing trims."""
    out = set()
    for s in samples:
        gray = load_gray(s.path)
        if trim_padding(gray).shape != gray.shape:
            out.add(s.path)
    return out


def build_shifted(samples: list[Sample], shift: str, size: int, seed: int,
                  cache_dir: str | Path = ".cache", progress: bool = True) -> np.ndarray:
    """[N, size, size] model inputs of one population shift, through the serving geometry;
    cached, keyed by everything they depend on."""
    key = hashlib.sha1("\n".join([POPULATION_SHIFT_VERSION, PREPROCESSING_VERSION, shift, str(size),
                                  str(seed), *(s.path for s in samples)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"population-{shift}-{size}-{key}.npy"
    if path.is_file():
        return np.load(path)
    images = np.zeros((len(samples), size, size), dtype=np.float32)
    for i, s in enumerate(tqdm(samples, desc=f"population shift {shift}", unit="img",
                               disable=not progress)):
        gray = apply_shift(load_gray(s.path), shift, shift_rng(seed, shift, s.path))
        images[i] = fit_to_square(gray, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, images)
    tmp.rename(path)
    return images


def group_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| group | class | images | AUROC against the other class | rate at threshold |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['group']} | {r['class']} | {r['n']} | {r['auroc']:.4f} | "
              f"{r['rate_name']} {r['rate']:.3f} |" for r in rows]
    return lines


def prior_markdown(name: str, p: dict[str, Any]) -> str:
    low, high = p["accuracy_at_field_prevalence_95ci"]
    return (f"- {name}: accuracy {p['accuracy_at_threshold']:.3f} at this set's prevalence "
            f"({p['set_prevalence']:.3f}); {p['accuracy_at_field_prevalence']:.3f} ({low:.3f}-{high:.3f}) "
            f"at the field's {p['prevalence']:.3f}. The best threshold there on this set would be "
            f"{p['best_threshold_at_field_prevalence']:.4f} (accuracy "
            f"{p['best_accuracy_at_field_prevalence']:.3f}, chosen and measured on the same images).")


EARLIEST_FRACTION = 0.2  # the campaign configs' val_fraction with holdout = "earliest"


def parse_shifts(text: str) -> list[str]:
    """`all`, `none`, or comma-separated names from `population_shift.SHIFTS`."""
    if text.strip() == "all":
        return list(SHIFTS)
    if text.strip() in ("none", ""):
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHIFTS]
    if unknown:
        raise ValueError(f"population shifts must be among {SHIFTS}, got {unknown}")
    return names


def field_results(classifier: Classifier, samples: list[Sample], y: np.ndarray, probs: np.ndarray,
                  data: Path, shifts: list[str], seed: int, cache_dir: str | Path
                  ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], list[str]]:
    """Groups, prior shift and population-shift columns for the samples a report scored: the
    results for metrics.json, extra report columns, and Markdown lines."""

    m = classifier.manifest
    flag_index = m.labels.index(m.flag_label)
    earliest = {s.path for s in split_earliest(discover(data), EARLIEST_FRACTION)[1]}
    groups = groups_of(samples, earliest, trimmed_paths(samples))
    rows = group_table(y, probs, groups, m.threshold)
    results: dict[str, Any] = {"groups": rows, "worst_group": worst(rows),
                               "prior_shift": prior_shift(y, probs, m.threshold),
                               "population_shift": {}}
    lines = ["", "## Field validation", "",
             f"Groups: each class's series or kind against all of the other class; `earliest`: the "
             f"patient is among the earliest {EARLIEST_FRACTION:.0%} of its series "
             "(`holdout = \"earliest\"`); `padding`: the picture has edge bands that preprocessing "
             "trims.", "", *group_markdown(rows), "",
             f"Worst group: {rows and worst(rows)['group']} ({worst(rows)['class']}), AUROC "
             f"{worst(rows)['auroc']:.4f}.", "", "Prior shift (the withheld split has 62.5% pneumonia):",
             prior_markdown("plain", results["prior_shift"])]
    columns: list[tuple[str, dict[str, Any]]] = []
    pooled_y, pooled_p = [], []
    shift_rows = []
    for shift in shifts:
        images = build_shifted(samples, shift, m.input_size, seed, cache_dir)
        shifted_probs = classifier.probabilities(images)[:, flag_index]
        summary = summarize(y, shifted_probs, m.threshold)
        shift_groups = group_table(y, shifted_probs, groups, m.threshold)
        results["population_shift"][shift] = {
            **summary, "worst_group": worst(shift_groups),
            "prior_shift": prior_shift(y, shifted_probs, m.threshold),
            "mean_change_in_p": float((shifted_probs - probs).mean()),
            "mean_abs_change_in_p": float(np.abs(shifted_probs - probs).mean())}
        columns.append((f"shift: {shift}", summary))
        shift_rows.append((shift, results["population_shift"][shift]))
        pooled_y.append(y)
        pooled_p.append(shifted_probs)
    if shifts:
        pooled = summarize(np.concatenate(pooled_y), np.concatenate(pooled_p), m.threshold)
        results["population_shift"]["pooled"] = {
            **pooled, "prior_shift": prior_shift(np.concatenate(pooled_y), np.concatenate(pooled_p),
                                                 m.threshold)}
        columns.append(("population shift, pooled", pooled))
        lines += [prior_markdown("population shift, pooled", results["population_shift"]["pooled"]
                                 ["prior_shift"]), "",
                  f"Population shift (seed {seed}; `cxrtriage.models.population_shift`): each held-out "
                  "picture once per shift, through the serving geometry. The pooled intervals treat "
                  "the shifts of one picture as independent, so they are somewhat too narrow.", "",
                  "| shift | AUROC | worst group (AUROC) | mean change in p | mean abs change in p | "
                  "accuracy at 62.5% |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {r['auroc']:.4f} | {r['worst_group']['group']} {r['worst_group']['class']} "
                  f"({r['worst_group']['auroc']:.4f}) | {r['mean_change_in_p']:+.4f} | "
                  f"{r['mean_abs_change_in_p']:.4f} | "
                  f"{r['prior_shift']['accuracy_at_field_prevalence']:.3f} |" for name, r in shift_rows]
    return results, columns, lines
