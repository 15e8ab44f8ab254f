"""Re-choosing a package's operating point on a harder set than the validation, keeping its weights.

The validation patients come from the same hospital and pipeline as the training images and are
saturated (AUROC ~0.999), so a threshold chosen on them (Youden) sits wherever the two classes
happen to separate there, far lower than unseen data needs. Two harder sets hold the same
patients: the shifted validation (`--on shifted`) passes them through acquisition and encoding
variation as DICOM; the pooled population shift (`--on population`) through the variation
acquisition simulation does not cover (`population_shift`). Youden or a target sensitivity on
either is a rule that does not depend on the prevalence of pneumonia (sensitivity and specificity
are computed within each class).

Run: python -m cxrtriage.models.operating_point PACKAGE CONFIG.toml OUTPUT --version 2.0.0 \
    --on population --rule youden
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtriage.models import metrics
from cxrtriage.models.calibration import fit_temperature
from cxrtriage.models.card import render_card
from cxrtriage.models.evaluation import holdout_samples
from cxrtriage.models.field_validation import build_shifted
from cxrtriage.models.inference import Classifier
from cxrtriage.models.manifest import CARD_FILE, MANIFEST_FILE, Manifest, read_manifest
from cxrtriage.models.metrics import summarize
from cxrtriage.models.model_input import (
    PREPROCESSING_VERSION,
    fit_to_square,
    load_gray,
    preprocessing_changes,
)
from cxrtriage.models.population_shift import SHIFTS
from cxrtriage.models.shifted import build
from cxrtriage.models.train_config import load_train_config


def measure(package: Path, holdout: Path, variants: int, seed: int, cache_dir: Path,
            population: bool = False) -> dict[str, Any]:
    """Raw ensemble logits and labels for both validations (through the serving paths), and with
    `population`, for the pooled population shift of the same patients (each picture once per
    shift in `population_shift.SHIFTS`)."""
    classifier = Classifier(package)
    m = classifier.manifest
    flag = m.labels.index(m.flag_label)
    samples = [s for s in holdout_samples(holdout) if s.label in m.labels]
    images = np.stack([fit_to_square(load_gray(s.path), m.input_size) for s in samples])
    shifted = build(samples, m, variants=variants, seed=seed, cache_dir=cache_dir)
    y = np.array([s.label == m.flag_label for s in samples], dtype=int)
    measured = {"flag_index": flag, "y": y, "logits": classifier.logits(images),
                "shifted_y": y[shifted.sample_index],
                "shifted_logits": classifier.logits(shifted.images)}
    if population:
        measured["population_y"] = np.tile(y, len(SHIFTS))
        measured["population_logits"] = torch.cat([
            classifier.logits(build_shifted(samples, shift, m.input_size, seed, cache_dir))
            for shift in SHIFTS])
    return measured


def probabilities(logits: torch.Tensor, temperature: float, flag_index: int) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1)[:, flag_index].numpy()


# The key prefix of each set in what `measure` returns.
MEASURED_SETS = {"validation": "", "shifted": "shifted_", "population": "population_"}


def scores(measured: dict[str, Any], name: str, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, flag probabilities) of one measured set (a key of MEASURED_SETS)."""
    prefix = MEASURED_SETS[name]
    return measured[f"{prefix}y"], probabilities(measured[f"{prefix}logits"], temperature,
                                                 measured["flag_index"])


# Where a threshold can be chosen, and why a rule there does not follow the saturated validation.
CHOICE_SETS = {
    "shifted": ("the shifted validation",
                "it already includes the DICOM path's spread"),
    "population": ("the pooled population shift",
                   "it holds what acquisition simulation does not: rotation, collimation, burned-in "
                   "markers, lines and tubes, low dose and another crop of the chest, which move the "
                   "normals' scores up as unseen patients' do"),
}


def choose(measured: dict[str, Any], rule: str, refit_temperature: bool,
           temperature: float, on: str = "shifted") -> tuple[float, float]:
    """(temperature, threshold): the threshold by `rule` on the set `on` (a key of CHOICE_SETS);
    the temperature refitted on that set when asked."""
    y, logits = measured[f"{on}_y"], measured[f"{on}_logits"]
    if refit_temperature:
        targets = torch.from_numpy(np.where(y == 1, measured["flag_index"],
                                            1 - measured["flag_index"])).long()
        temperature = fit_temperature(logits, targets)
    return temperature, metrics.choose_threshold(*scores(measured, on, temperature), rule)


def repackage(source: Path, output: Path, version: str, threshold: float, temperature: float,
              rule: str, results: dict[str, Any], name: str | None = None,
              note: str = "") -> Manifest:
    """Copy the package with a new version, operating point, metrics, regression values and card
    (and, when given, a new name and a note on how its members were trained)."""
    if output.resolve() != source.resolve():
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(source, output)
    manifest = read_manifest(source)
    training_data = {**manifest.training_data, **({"note": note} if note else {})}
    manifest = replace(manifest, name=name or manifest.name, version=version, threshold=threshold,
                       temperature=temperature, threshold_rule=rule, metrics=results,
                       preprocessing_version=PREPROCESSING_VERSION, training_data=training_data)
    (output / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    classifier = Classifier(output, device=torch.device("cpu"))
    regression = {}
    for relative in manifest.regression.get("predictions", {}):
        image = fit_to_square(load_gray(output / relative), manifest.input_size)
        regression[relative] = classifier.predict([relative], image[None])[0].probabilities
    manifest = replace(manifest, regression={"predictions": regression})
    (output / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    cfg = load_train_config(output / "train_config.toml")
    history = json.loads((output / "training_log.json").read_text())
    (output / CARD_FILE).write_text(render_card(manifest, cfg, history))
    return manifest


def with_test_time_crops(source: Path, output: Path, crops: list[float]) -> Path:
    """A copy of the package at `output` whose manifest lists `crops` (weights unchanged)."""
    if output.resolve() != source.resolve():
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(source, output)
    manifest = replace(read_manifest(output), test_time_crops=crops)
    (output / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return output


def rechoose(package: Path, holdout: Path, output: Path, version: str,
             rule: str = "sensitivity:0.95", refit_temperature: bool = False, variants: int = 2,
             seed: int = 20261123, cache_dir: Path = Path(".cache"), name: str | None = None,
             note: str = "", test_time_crops: list[float] | None = None, on: str = "shifted",
             expectation: str = "") -> Manifest:
    old = read_manifest(package)
    if test_time_crops is not None:  # measured with the views it will serve with
        package = with_test_time_crops(package, output, test_time_crops)
    measured = measure(package, holdout, variants, seed, cache_dir, population=on == "population")
    temperature, threshold = choose(measured, rule, refit_temperature, old.temperature, on)

    def summary(name: str) -> dict[str, Any]:
        return summarize(*scores(measured, name, temperature), threshold)

    where, why = CHOICE_SETS[on]
    before = metrics.at_threshold(*scores(measured, on, old.temperature), old.threshold)
    geometry = ""
    if changes := preprocessing_changes(old.preprocessing_version):
        geometry = (f"Preprocessing changed from version {old.preprocessing_version} to "
                    f"{PREPROCESSING_VERSION}: {'; '.join(changes.values())}. ")
    threshold_note = (
        f"{geometry}As packaged, {old.name} {old.version} used {old.threshold:.4f} "
        f"({old.threshold_rule}); with today's preprocessing, on {where}, that gives sensitivity "
        f"{before.sensitivity:.3f} and specificity {before.specificity:.3f}. The rule is applied "
        f"on {where} because {why}; sensitivity and specificity are computed within each class, "
        "so the rule does not depend on how common pneumonia is.")
    results = {"validation": summary("validation"), "shifted_validation": summary("shifted"),
               "shifted_description": f"{variants} recipes per picture, seed {seed}",
               "threshold_note": threshold_note,
               **({"expectation": expectation} if expectation else {})}
    if on == "population":
        results["population_shift"] = summary("population")
        results["population_description"] = (
            f"{len(SHIFTS)} shifts, each held-out picture once per shift, seed {seed}")
    return repackage(package, output, version, threshold, temperature,
                     f"{rule} on {where}", results, name, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("holdout", type=Path, help="training config whose validation patients to use")
    parser.add_argument("output", type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--rule", default="sensitivity:0.95")
    parser.add_argument("--on", choices=sorted(CHOICE_SETS), default="shifted",
                        help="the set the rule is applied on")
    parser.add_argument("--expectation", default="",
                        help="what to expect on unseen patients, and why, for the card")
    parser.add_argument("--refit-temperature", action="store_true")
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--name", help="a new package name (default: keep it)")
    parser.add_argument("--note", default="", help="how the members were trained, for the card")
    parser.add_argument("--test-time-crops", type=lambda text: [float(f) for f in text.split(",") if f],
                        help="central crops to average with the picture, e.g. 0.92,0.85 ('' for none)")
    args = parser.parse_args(argv)
    manifest = rechoose(args.package, args.holdout, args.output, args.version, args.rule,
                        args.refit_temperature, args.variants, args.seed, args.cache_dir,
                        args.name, args.note, args.test_time_crops, args.on, args.expectation)
    print(f"{manifest.name} {manifest.version}: threshold {manifest.threshold:.4f}, "
          f"temperature {manifest.temperature:.3f}, written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
