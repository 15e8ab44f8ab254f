"""The training loop: transfer strategies, imbalance handling, schedules, early stopping,
best-checkpoint saving and exact resume from the last completed epoch."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cxrtriage.errors import ModelError
from cxrtriage.models import metrics
from cxrtriage.models.architectures import adapt_imagenet_state, build_model, head_module_name
from cxrtriage.models.augment import augment_batch
from cxrtriage.models.data import Sample, discover, holdout_split, load_cached
from cxrtriage.models.ema import WeightAverage
from cxrtriage.models.losses import FocalLoss, class_weights, soft_cross_entropy
from cxrtriage.models.normalisation import network_input
from cxrtriage.models.package import load_package
from cxrtriage.models.train_config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST_WEIGHTS = "best.safetensors"
HISTORY = "history.json"


@dataclass
class Prepared:
    """Everything the loop needs, decoded once."""

    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    train_images: np.ndarray
    val_images: np.ndarray
    train_y: np.ndarray
    val_y: np.ndarray


def prepare_data(cfg: TrainConfig, cache_dir: Path) -> Prepared:
    samples = discover(cfg.data)
    if cfg.max_samples:
        rng = np.random.default_rng(cfg.seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), cfg.max_samples, replace=False))]
    labels = sorted({s.label for s in samples})
    if cfg.flag_label not in labels:
        raise ModelError(f"flag_label {cfg.flag_label!r} is not among the data labels {labels}")
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    train, val = holdout_split(samples, cfg.holdout, cfg.val_fraction, split_seed)
    index = {label: i for i, label in enumerate(labels)}
    return Prepared(labels, train, val, load_cached(train, cfg.input_size, cache_dir),
                    load_cached(val, cfg.input_size, cache_dir),
                    np.array([index[s.label] for s in train]), np.array([index[s.label] for s in val]))


def initial_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Scratch, a local ImageNet state dict, or another cxr-triage package. Never a download."""
    model = build_model(cfg.architecture, num_classes)
    if cfg.init == "scratch":
        return model
    source = Path(cfg.init)
    if not source.exists():
        raise ModelError(f"initial weights not found: expected a file at {source} "
                         "(weights are never downloaded; put the file there or use init = 'scratch')")
    if source.is_dir():
        _, donor = load_package(source)
        state = donor.state_dict()
    elif source.suffix == ".safetensors":
        state = load_file(str(source))
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    adapted = adapt_imagenet_state(model, state)
    if not adapted:
        raise ModelError(f"no tensor in {source} matches the {cfg.architecture} architecture")
    head = head_module_name(cfg.architecture) + "."
    own = model.state_dict()
    kept = {k: v for k, v in adapted.items() if not (k.startswith(head) and v.shape != own[k].shape)}
    model.load_state_dict(kept, strict=False)
    logger.info("initial weights loaded", extra={"tensors": len(kept)})
    return model


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Freeze per the transfer strategy and give the head and the base their own learning rates."""
    head_name = head_module_name(cfg.architecture)
    children = [(n, m) for n, m in model.named_children() if n != head_name]
    trainable_base: set[str] = set()
    if cfg.freeze == "none":
        trainable_base = {n for n, _ in children}
    elif cfg.freeze == "last_n":
        with_params = [n for n, m in children if any(True for _ in m.parameters())]
        trainable_base = set(with_params[-cfg.trainable_blocks :]) if cfg.trainable_blocks else set()
    base: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, module in model.named_children():
        for p in module.parameters():
            p.requires_grad = name == head_name or name in trainable_base
            if p.requires_grad:
                (head if name == head_name else base).append(p)
    groups = [{"params": head, "lr": cfg.lr}]
    if base:
        groups.append({"params": base, "lr": cfg.base_lr if cfg.base_lr is not None else cfg.lr})
    return groups


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    if cfg.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.restart_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch,
                                           gamma=cfg.step_gamma)


def epoch_order(y: np.ndarray, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Indices for one epoch: a class-balanced draw with replacement, or a shuffle."""
    if cfg.balance == "sampler":
        counts = np.bincount(y, minlength=int(y.max()) + 1)
        weights = torch.tensor(1.0 / counts[y], dtype=torch.float64)
        return torch.multinomial(weights, len(y), replacement=True, generator=generator)
    return torch.randperm(len(y), generator=generator)


def _normalise(images: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return network_input(images, cfg.input_normalisation, cfg.mean, cfg.std)


def predict_logits(model: nn.Module, images: np.ndarray, cfg: TrainConfig,
                   device: torch.device, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))
            out.append(model(_normalise(batch.unsqueeze(1), cfg).to(device)).float().cpu())
    return torch.cat(out)


def validate(model: nn.Module, data: Prepared, cfg: TrainConfig, device: torch.device,
             flag_index: int) -> dict[str, float]:
    logits = predict_logits(model, data.val_images, cfg, device)
    y = torch.from_numpy(data.val_y)
    probs = torch.softmax(logits, 1)[:, flag_index].numpy()
    positive = (data.val_y == flag_index).astype(int)
    return {"val_loss": float(nn.functional.cross_entropy(logits, y)),
            "val_auroc": metrics.roc_auc(positive, probs),
            "val_accuracy": metrics.at_threshold(positive, probs, 0.5).accuracy}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)


def _improved(metric: str, value: float, best: float | None) -> bool:
    if metric == "none":  # no early stopping: the last epoch is kept
        return True
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric == "loss" else value > best


def train(cfg: TrainConfig, run_dir: str | Path, cache_dir: str | Path | None = None,
          stop_after_epochs: int | None = None, progress: bool = True) -> Prepared:
    """Train, resuming from `run_dir/checkpoint.pt` when present. `stop_after_epochs` ends this
    call early (as an interruption would) and is used by tests of resume."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare_data(cfg, Path(cache_dir or run_dir / "cache"))
    flag_index = data.labels.index(cfg.flag_label)
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg, len(data.labels)).to(device)
    optimizer = make_optimizer(parameter_groups(model, cfg), cfg)
    steps = math.ceil(len(data.train_y) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps)
    counts = np.bincount(data.train_y, minlength=len(data.labels)).tolist()
    weight = class_weights(counts).to(device) if cfg.balance == "weights" else None
    focal = None
    if cfg.loss == "focal":
        focal = FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing).to(device)

    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "stale": 0, "history": []}
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["loop"]
        if average is not None:
            average.load_state_dict(saved["ema"])
        logger.info("resumed", extra={"epoch": state["epoch"]})

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    metric_key = f"val_{cfg.early_stopping_metric}"  # "val_none" is no column: the epoch stands in
    done_this_call = 0
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        torch.manual_seed(cfg.seed + 1000 * (epoch + 1))  # dropout and other global randomness
        generator = torch.Generator().manual_seed(cfg.seed + epoch)
        order = epoch_order(data.train_y, cfg, generator)
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   unit="batch")
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size].numpy()
            images = torch.from_numpy(np.asarray(data.train_images[np.sort(idx)], dtype=np.float32))
            images = augment_batch(images.unsqueeze(1), cfg.augment, generator)
            target: torch.Tensor = torch.from_numpy(data.train_y[np.sort(idx)]).long()
            if cfg.mixup_alpha > 0:
                lam = float(torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha).sample())
                perm = torch.randperm(len(idx), generator=generator)
                images = lam * images + (1 - lam) * images[perm]
                onehot = nn.functional.one_hot(target, len(data.labels)).float()
                target = lam * onehot + (1 - lam) * onehot[perm]
            logits = model(_normalise(images, cfg).to(device))
            target = target.to(device)
            if focal is not None:
                loss = focal(logits, target)
            else:
                loss = soft_cross_entropy(logits, target, weight, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update(model)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        judged = average.averaged(model) if average is not None else model  # what would ship
        row = {"epoch": epoch + 1, "train_loss": total / seen,
               "lr": optimizer.param_groups[0]["lr"], **validate(judged, data, cfg, device, flag_index)}
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, epoch + 1)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        value = float(row.get(metric_key, epoch + 1))
        if _improved(cfg.early_stopping_metric, value, state["best"]):
            state.update(best=value, best_epoch=epoch + 1, stale=0)
            save_file({k: v.detach().cpu().contiguous() for k, v in judged.state_dict().items()},
                      str(run_dir / BEST_WEIGHTS))
        else:
            state["stale"] += 1
        saved_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "loop": state}
        if average is not None:
            saved_state["ema"] = average.state_dict()
        _save_checkpoint(checkpoint, saved_state)
        (run_dir / HISTORY).write_text(json.dumps(state["history"], indent=1))
        logger.info("epoch done", extra=row)
        done_this_call += 1
        if stop_after_epochs is not None and done_this_call >= stop_after_epochs:
            break
    writer.close()
    return data


def best_model(cfg: TrainConfig, run_dir: str | Path, num_classes: int) -> nn.Module:
    model = build_model(cfg.architecture, num_classes)
    model.load_state_dict(load_file(str(Path(run_dir) / BEST_WEIGHTS)))
    return model.eval()

