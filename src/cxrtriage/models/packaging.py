"""Turn a finished training run into a model package: calibrate on validation patients, choose
the operating threshold by the configured rule, measure with intervals, record regression
predictions, and write the card."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrtriage.errors import ModelError
from cxrtriage.models import metrics
from cxrtriage.models.calibration import fit_temperature
from cxrtriage.models.card import render_card
from cxrtriage.models.data import Sample
from cxrtriage.models.inference import Classifier
from cxrtriage.models.manifest import MANIFEST_FILE, Manifest
from cxrtriage.models.metrics import summarize
from cxrtriage.models.model_input import PREPROCESSING_VERSION, fit_to_square, load_gray
from cxrtriage.models.package import save_package
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


@dataclass(frozen=True)
class Member:
    """A further training run to average with the main one (same split, input and labels)."""

    cfg: TrainConfig
    run_dir: Path
    config_file: Path


def _best_epoch(cfg: TrainConfig, history: list[dict[str, Any]]) -> int:
    if cfg.early_stopping_metric == "none":
        return int(history[-1]["epoch"])
    sign = -1 if cfg.early_stopping_metric == "loss" else 1
    return int(max(history, key=lambda r: sign * r[f"val_{cfg.early_stopping_metric}"])["epoch"])


def _member_network(member: Member, cfg: TrainConfig, data: Prepared, cache: Path) -> nn.Module:
    same = ("input_size", "mean", "std", "input_normalisation", "flag_label")
    if any(getattr(member.cfg, k) != getattr(cfg, k) for k in same):
        raise ModelError(f"ensemble members must share {', '.join(same)} with {cfg.name}")
    member_data = prepare_data(member.cfg, cache)
    if [s.path for s in member_data.val] != [s.path for s in data.val]:
        raise ModelError(f"{member.cfg.name} holds out other validation patients than {cfg.name}; "
                         "give both the same split_seed")
    return best_model(member.cfg, member.run_dir, len(data.labels))


def package_run(cfg: TrainConfig, run_dir: Path, output: Path, config_file: str | Path,
                cache_dir: Path | None = None, members: list[Member] | None = None,
                half: bool = False) -> Path:
    """Package the best checkpoint of `run_dir` (and of each member run, averaged)."""
    members = members or []
    cache = cache_dir or run_dir / "cache"
    data = prepare_data(cfg, cache)
    networks = [best_model(cfg, run_dir, len(data.labels))]
    networks += [_member_network(m, cfg, data, cache) for m in members]
    if half:  # measure exactly what ships: weights rounded to fp16
        networks = [n.half().float() for n in networks]
    device = torch.device("cpu")
    # Measure through the serving path (float32 decode), not the float16 training cache, so the
    # card's figures are those `cxrtriage evaluate` reproduces.
    val_images = np.stack([fit_to_square(load_gray(s.path), cfg.input_size) for s in data.val])
    member_logits = [predict_logits(n, val_images, cfg, device) for n in networks]
    logits = torch.stack(member_logits).mean(dim=0)
    temperature = fit_temperature(logits, torch.from_numpy(data.val_y).long())
    flag_index = data.labels.index(cfg.flag_label)
    probs = torch.softmax(logits / temperature, 1)[:, flag_index].numpy()
    y = (data.val_y == flag_index).astype(int)
    threshold = metrics.choose_threshold(y, probs, cfg.threshold_rule)
    val = summarize(y, probs, threshold)
    history = json.loads((run_dir / HISTORY).read_text())
    runs = [(cfg, run_dir)] + [(m.cfg, m.run_dir) for m in members]
    member_rows = []
    for (member_cfg, member_run), member_logit in zip(runs, member_logits, strict=True):
        member_history = json.loads((member_run / HISTORY).read_text())
        member_rows.append({"name": member_cfg.name, "seed": member_cfg.seed,
                            "epochs_run": len(member_history),
                            "best_epoch": _best_epoch(member_cfg, member_history),
                            "val_auroc": metrics.roc_auc(y, torch.softmax(member_logit, 1)[:, flag_index]
                                                         .numpy())})
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    manifest = Manifest(
        name=cfg.name, version=cfg.version, architecture=cfg.architecture,
        input_size=cfg.input_size, in_channels=1, mean=cfg.mean, std=cfg.std, labels=data.labels,
        flag_label=cfg.flag_label, threshold=threshold, temperature=temperature,
        threshold_rule=f"{cfg.threshold_rule} on validation patients",
        preprocessing_version=PREPROCESSING_VERSION, input_normalisation=cfg.input_normalisation,
        intended_population=cfg.intended_population,
        training_data={"description": cfg.data_description,
                        "train_images": len(data.train), "val_images": len(data.val),
                        "train_patients": len({s.patient for s in data.train}),
                        "val_patients": len({s.patient for s in data.val}),
                        "split": (f"by patient, seed {split_seed}, {cfg.val_fraction:.0%} of patients "
                                  "held out per label") if cfg.holdout == "patients" else
                                 (f"the earliest {cfg.val_fraction:.0%} of each series' patients "
                                  "held out (by patient number)"),
                        "epochs_run": len(history), "best_epoch": _best_epoch(cfg, history),
                        "members": member_rows, "weights_dtype": "float16" if half else "float32",
                        "packaged_at": datetime.now(UTC).isoformat(timespec="seconds")},
        metrics={"validation": val})
    extra = [(m.cfg.architecture, n) for m, n in zip(members, networks[1:], strict=True)]
    saved = save_package(output, networks[0], manifest, "", members=extra, half=half)
    classifier = Classifier(output, device=device)
    regression = {}
    for relative in _copy_regression_images(data, data.labels, output):
        image = fit_to_square(load_gray(output / relative), cfg.input_size)
        regression[relative] = classifier.predict([relative], image[None])[0].probabilities
    final = replace(saved, regression={"predictions": regression})
    (output / MANIFEST_FILE).write_text(json.dumps(asdict(final), indent=2) + "\n")
    (output / "MODEL_CARD.md").write_text(render_card(final, cfg, history))
    shutil.copyfile(config_file, output / "train_config.toml")
    shutil.copyfile(run_dir / HISTORY, output / "training_log.json")
    for index, member in enumerate(members, start=2):
        shutil.copyfile(member.config_file, output / f"train_config-member-{index}.toml")
        shutil.copyfile(member.run_dir / HISTORY, output / f"training_log-member-{index}.json")
    write_split_csv(data.val, run_dir / VALIDATION_CSV)
    return output


def write_split_csv(samples: list[Sample], target: Path) -> None:
    """The held-out patients as path,label,patient, for `cxrtriage evaluate`."""
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        writer.writerows([s.path, s.label, s.patient] for s in samples)
