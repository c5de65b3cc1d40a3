"""Diabetes: scikit-learn's bundled tabular regression data (442 patients, 10 features)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import mlp, split


class Diabetes:
    """A 10-32-32-1 ReLU MLP with dropout 0.1, AdamW; targets standardised."""

    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "beta1": Uniform(0.5, 0.99),
        "weight_decay": LogUniform(1e-6, 1e-1),
    }

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        return split(x, y, seed)

    def model(self) -> torch.nn.Module:
        return mlp([10, 32, 32, 1], dropout=0.1)

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=hp["lr"], betas=(hp["beta1"], 0.999), weight_decay=hp["weight_decay"])
