"""Turn a finished training run into a model package: calibrate on validation patients, choose
the operating threshold by the configured rule, measure with intervals, record regression
predictions, and write the card."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from cxrtriage.dicom.preprocess import PREPROCESSING_VERSION, fit_to_square, load_gray
from cxrtriage.models import metrics
from cxrtriage.models.calibration import fit_temperature
from cxrtriage.models.card import render_card
from cxrtriage.models.data import Sample
from cxrtriage.models.evaluation import summarize
from cxrtriage.models.inference import Classifier
from cxrtriage.models.package import MANIFEST_FILE, Manifest, save_package
from cxrtriage.models.train_config import TrainConfig
from cxrtriage.models.training import HISTORY, Prepared, best_model, predict_logits, prepare_data

REGRESSION_IMAGES_PER_LABEL = 2
REGRESSION_DIR = "regression"
VALIDATION_CSV = "validation.csv"


def _copy_regression_images(data: Prepared, labels: list[str], output: Path) -> list[str]:
    """A few validation images, copied into the package so the regression check needs nothing else."""
    chosen = []
    for label in labels:
        for sample in [s for s in data.val if s.label == label][:REGRESSION_IMAGES_PER_LABEL]:
            relative = Path(REGRESSION_DIR) / label / Path(sample.path).name
            (output / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample.path, output / relative)
            chosen.append(str(relative))
    return chosen


def package_run(cfg: TrainConfig, run_dir: Path, output: Path, config_file: str | Path,
                cache_dir: Path | None = None) -> Path:
    data = prepare_data(cfg, cache_dir or run_dir / "cache")
    model = best_model(cfg, run_dir, len(data.labels))
    device = torch.device("cpu")
    logits = predict_logits(model, data.val_images, cfg, device)
    temperature = fit_temperature(logits, torch.from_numpy(data.val_y).long())
    flag_index = data.labels.index(cfg.flag_label)
    probs = torch.softmax(logits / temperature, 1)[:, flag_index].numpy()
    y = (data.val_y == flag_index).astype(int)
    threshold = metrics.choose_threshold(y, probs, cfg.threshold_rule)
    val = summarize(y, probs, threshold)
    history = json.loads((run_dir / HISTORY).read_text())
    val_patients = len({s.patient for s in data.val})
    manifest = Manifest(
        name=cfg.name, version=cfg.version, architecture=cfg.architecture,
        input_size=cfg.input_size, in_channels=1, mean=cfg.mean, std=cfg.std, labels=data.labels,
        flag_label=cfg.flag_label, threshold=threshold, temperature=temperature,
        threshold_rule=f"{cfg.threshold_rule} on validation patients",
        preprocessing_version=PREPROCESSING_VERSION, intended_population=cfg.intended_population,
        training_data={"description": cfg.data_description,
                        "train_images": len(data.train), "val_images": len(data.val),
                        "train_patients": len({s.patient for s in data.train}),
                        "val_patients": val_patients, "split": "by patient, seed "
                        f"{cfg.seed}, {cfg.val_fraction:.0%} of patients held out per label",
                        "epochs_run": len(history), "best_epoch": max(
                            history, key=lambda r: r[f"val_{cfg.early_stopping_metric}"]
                            * (-1 if cfg.early_stopping_metric == "loss" else 1))["epoch"],
                        "packaged_at": datetime.now(UTC).isoformat(timespec="seconds")},
        metrics={"validation": val})
    saved = save_package(output, model, manifest, "")
    classifier = Classifier(output, device=device)
    regression = {}
    for relative in _copy_regression_images(data, data.labels, output):
        image = fit_to_square(load_gray(output / relative), cfg.input_size)
        regression[relative] = classifier.predict([relative], image[None])[0].probabilities
    final = replace(saved, regression={"predictions": regression})
    (output / MANIFEST_FILE).write_text(json.dumps(asdict(final), indent=2) + "\n")
    (output / "MODEL_CARD.md").write_text(render_card(final, cfg, history))
    shutil.copy(config_file, output / "train_config.toml")
    shutil.copy(run_dir / HISTORY, output / "training_log.json")
    write_split_csv(data.val, run_dir / VALIDATION_CSV)
    return output


def write_split_csv(samples: list[Sample], target: Path) -> None:
    """The held-out patients as path,label,patient, for `cxrtriage evaluate`."""
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        writer.writerows([s.path, s.label, s.patient] for s in samples)
