"""Sparse regression: many features, few of them informative (scikit-learn's linear generator, with noise)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import mlp, split


class SparseRegression:
    """800 samples of 30 features, 5 informative, Gaussian noise sd 50 (10-25% of the target's variance,
    by seed); a 30-64-64-1 ReLU MLP, plain SGD with momentum and weight decay; targets standardised.

    The 25 uninformative inputs give the small training split (480 samples) room to overfit them.
    """

    space = {
        "lr": LogUniform(1e-4, 3e-1),
        "momentum": Uniform(0.0, 0.99),
        "weight_decay": LogUniform(1e-6, 1e-1),
    }
    n_samples = 800
    n_features = 30
    n_informative = 5
    noise = 50.0  # make_regression's coefficients are up to 100: the signal's sd is about 85-155

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import make_regression

        x, y = make_regression(n_samples=self.n_samples, n_features=self.n_features,
                               n_informative=self.n_informative, noise=self.noise, random_state=seed)
        return split(x, y, seed)

    def model(self) -> torch.nn.Module:
        return mlp([self.n_features, 64, 64, 1])

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
