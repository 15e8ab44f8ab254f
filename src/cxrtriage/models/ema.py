"""An exponential moving average of a network's weights (and batch-norm statistics).

The average of the weights over the last few hundred steps generalises better under shift
than the last step's weights, at no training cost beyond one multiply-add per tensor a step.
Its state is saved in the checkpoint, so a resumed run averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


class WeightAverage:
    """`decay` per step, warmed up as (1 + n) / (10 + n) so that the random initial weights do
    not dominate the first epochs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))

    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if value.dtype.is_floating_point:
                    self.state[key].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
                else:  # counters such as num_batches_tracked
                    self.state[key].copy_(value)
        self.steps += 1

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the averaged weights, in eval mode."""
        out = copy.deepcopy(model)
        out.load_state_dict(self.state)
        return out.eval()

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "weights": self.state}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        steps, weights = saved["steps"], saved["weights"]
        if not isinstance(steps, int) or not isinstance(weights, dict):
            raise ValueError("an EMA state holds 'steps' (int) and 'weights' (a state dict)")
        self.steps = steps
        self.state = {k: v.clone() for k, v in weights.items()}
