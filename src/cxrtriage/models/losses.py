"""Losses for imbalanced classes: class-weighted cross-entropy and focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017) on soft or hard targets, with optional class weights."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.weight: torch.Tensor
        self.register_buffer("weight", weight if weight is not None else torch.tensor([]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        if target.ndim == 1:
            target = F.one_hot(target, classes).float()
        target = target * (1 - self.label_smoothing) + self.label_smoothing / classes
        log_p = F.log_softmax(logits, dim=1)
        loss = -target * (1 - log_p.exp()) ** self.gamma * log_p
        if self.weight.numel():
            loss = loss * self.weight
        return loss.sum(dim=1).mean()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       label_smoothing: float) -> torch.Tensor:
    """Cross-entropy that accepts mixup's soft targets."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    classes = logits.shape[1]
    target = target * (1 - label_smoothing) + label_smoothing / classes
    loss = -target * F.log_softmax(logits, dim=1)
    if weight is not None:
        loss = loss * weight
    return loss.sum(dim=1).mean()


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights that average to one."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    weights = counts_t.sum() / (len(counts) * counts_t)
    return weights / weights.mean()
