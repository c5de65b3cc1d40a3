"""Digits: scikit-learn's bundled 8x8 handwritten digits, 10-class classification."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import mlp, split


class Digits:
    """1,797 images, a 64-64-10 ReLU MLP, cross-entropy, Adam.

    The population's averaged prediction averages class probabilities
    (`ensemble_in` = softmax) and turns the mean back into log-probabilities,
    which cross-entropy accepts as logits.
    """

    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "beta1": Uniform(0.5, 0.99),
        "weight_decay": LogUniform(1e-7, 1e-2),
    }

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return split(x, y, seed)

    def model(self) -> torch.nn.Module:
        return mlp([64, 64, 10])

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], 0.999), weight_decay=hp["weight_decay"])

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)

    def ensemble_in(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)

    def ensemble_out(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.clamp_min(1e-12))
