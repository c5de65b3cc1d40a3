"""Friedman #1: tabular regression from scikit-learn's generator (10 features, 5 informative)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import mlp, split


class Friedman1:
    """1,500 samples (noise sd 1.0), a 10-64-64-1 ReLU MLP, SGD with momentum."""

    space = {
        "lr": LogUniform(1e-4, 3e-1),
        "momentum": Uniform(0.0, 0.99),
        "weight_decay": LogUniform(1e-7, 1e-2),
    }
    n_samples = 1500
    n_features = 10
    noise = 1.0

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=self.n_samples, n_features=self.n_features, noise=self.noise,
                              random_state=seed)
        return split(x, y, seed)

    def model(self) -> torch.nn.Module:
        return mlp([10, 64, 64, 1])

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
