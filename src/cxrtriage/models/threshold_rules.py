"""Every threshold rule on every set, judged on every set: the table behind a package's rule.

Each rule (Youden, target sensitivities, best accuracy at the withheld split's prevalence) is
applied on the validation patients, their shifted DICOM validation, their pooled population shift
and its `combined` shift alone; each threshold is then judged by the accuracy it gives at that
prevalence on every set and on each population shift, and by its worst shift. A rule chosen on a
saturated set looks best there and worst where unseen patients differ.

Run: python -m cxrtriage.models.threshold_rules PACKAGE CONFIG.toml [--test-time-crops 0.92,0.85]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.models.field_validation import FIELD_PREVALENCE, accuracy_at_prevalence
from cxrtriage.models.manifest import read_manifest
from cxrtriage.models.metrics import choose_threshold
from cxrtriage.models.operating_point import measure, scores, with_test_time_crops
from cxrtriage.models.population_shift import SHIFTS

RULES = ("youden", "sensitivity:0.95", "sensitivity:0.97", f"accuracy@{FIELD_PREVALENCE}")
CHOSEN_ON = ("validation", "shifted", "pooled", "combined")

Scored = dict[str, tuple[np.ndarray, np.ndarray]]


def scored_sets(measured: dict[str, Any], temperature: float) -> Scored:
    """(labels, flag probabilities) of every set `operating_point.measure(population=True)`
    scored, and of each population shift alone."""
    y = measured["y"]
    sets = {"validation": scores(measured, "validation", temperature),
            "shifted": scores(measured, "shifted", temperature),
            "pooled": scores(measured, "population", temperature)}
    pooled = sets["pooled"][1]
    for i, shift in enumerate(SHIFTS):  # measure() concatenates the shifts in this order
        sets[shift] = (y, pooled[i * len(y):(i + 1) * len(y)])
    return sets


def compare(sets: Scored, prevalence: float = FIELD_PREVALENCE) -> list[dict[str, Any]]:
    rows = []
    for on in CHOSEN_ON:
        for rule in RULES:
            threshold = choose_threshold(*sets[on], rule)
            accuracy = {name: accuracy_at_prevalence(y, p, threshold, prevalence)
                        for name, (y, p) in sets.items()}
            rows.append({"rule": rule, "on": on, "threshold": threshold, "accuracy": accuracy,
                         "worst_shift": min(accuracy[shift] for shift in SHIFTS)})
    return rows


def markdown(rows: list[dict[str, Any]], prevalence: float = FIELD_PREVALENCE) -> str:
    names = list(rows[0]["accuracy"])
    lines = [f"Accuracy at {prevalence:.1%} positives of each rule's threshold, on every set:", "",
             "| rule | on | threshold | " + " | ".join(names) + " | worst shift |",
             "| --- | --- | --- |" + " --- |" * (len(names) + 1)]
    lines += [f"| {r['rule']} | {r['on']} | {r['threshold']:.4f} | "
              + " | ".join(f"{r['accuracy'][n]:.3f}" for n in names)
              + f" | {r['worst_shift']:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("holdout", type=Path, help="training config whose validation patients to use")
    parser.add_argument("--test-time-crops", type=lambda text: [float(f) for f in text.split(",") if f],
                        help="judge the package with these central crops (e.g. 0.92,0.85)")
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        package = args.package
        if args.test_time_crops is not None:
            package = with_test_time_crops(package, Path(scratch) / "package", args.test_time_crops)
        measured = measure(package, args.holdout, args.variants, args.seed, args.cache_dir,
                           population=True)
        print(markdown(compare(scored_sets(measured, read_manifest(package).temperature))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
