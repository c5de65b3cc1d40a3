"""A 1-D nonlinear function fit, like the paper's regression figure (the default task)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import mlp


def target(x: np.ndarray) -> np.ndarray:
    """The function to learn: a damped wave on a slope."""
    return np.sin(3.0 * x) * np.exp(-0.3 * x**2) + 0.3 * x


class Regression1D:
    """Fit y = f(x) + noise on x in [-4, 4] with a 1-64-64-1 tanh MLP and Adam.

    Training and validation targets carry Gaussian noise (sd 0.1); the test
    set is the noise-free function on a grid, so the test loss measures the fit.
    """

    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "beta1": Uniform(0.5, 0.99),
        "weight_decay": LogUniform(1e-7, 1e-2),
    }
    noise = 0.1

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        rng = np.random.default_rng(seed)
        def noisy(n: int) -> TensorDataset:
            x = rng.uniform(-4.0, 4.0, size=(n, 1))
            y = target(x) + self.noise * rng.standard_normal((n, 1))
            return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
        grid = np.linspace(-4.0, 4.0, 400).reshape(-1, 1)
        test = TensorDataset(torch.tensor(grid, dtype=torch.float32), torch.tensor(target(grid), dtype=torch.float32))
        return noisy(512), noisy(256), test

    def model(self) -> torch.nn.Module:
        return mlp([1, 64, 64, 1], activation=torch.nn.Tanh)

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], 0.999), weight_decay=hp["weight_decay"])
