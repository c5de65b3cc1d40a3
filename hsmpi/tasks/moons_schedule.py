"""Two moons with a learning-rate schedule whose shape is searched: warm-up length and final decay.

- data: scikit-learn's two interleaving half-circles with label noise from overlap
  (`make_moons`, noise 0.3), 1,000 points split 60/20/20 with the run seed and
  standardised with the training split's statistics;
- model: a 2-32-32-2 tanh MLP, cross-entropy;
- optimizer and schedule: SGD with momentum; the learning rate rises linearly
  over the first `warmup` share of the run's steps (batches), reaching `lr` at
  the warm-up's last step, then decays exponentially (a constant ratio per step)
  to `lr * decay` at the run's last step (`decay` = 1: constant after warm-up).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import Classification, mlp, split


def lr_factor(step: int, warm: int, total: int, decay: float) -> float:
    """The schedule's multiplier of the base learning rate at 0-based training step `step` of `total`."""
    peak = max(warm - 1, 0)  # the step at the full rate: the warm-up's last, or the first without one
    if step < peak:
        return (step + 1) / warm
    span = max(1, total - 1 - peak)  # from 1 at the peak down to `decay` at the run's last step
    return float(decay ** (min(step - peak, span) / span))


class MoonsSchedule(Classification):
    """1,000 noisy two-moons points, SGD with momentum under a warm-up then exponential-decay schedule."""

    space = {
        "lr": LogUniform(1e-3, 1.0),
        "momentum": Uniform(0.0, 0.95),
        "warmup": Uniform(0.0, 0.3),  # the share of all training steps spent warming the learning rate up
        "decay": LogUniform(1e-3, 1.0),  # the learning rate at the last step, as a fraction of `lr`
    }
    n_samples = 1000
    noise = 0.3

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import make_moons

        x, y = make_moons(n_samples=self.n_samples, noise=self.noise, random_state=seed)
        return split(x, y, seed)

    def model(self) -> torch.nn.Module:
        return mlp([2, 32, 32, 2], activation=torch.nn.Tanh)

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"])

    def scheduler(self, optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        total = steps_per_epoch * epochs
        warm = int(round(hp["warmup"] * total))
        decay = float(hp["decay"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warm, total, decay))
