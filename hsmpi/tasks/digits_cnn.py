"""Digits as images: a small CNN trained the way real code trains, through every optional task hook.

- data: scikit-learn's bundled 8x8 digits as 1x8x8 images, from a map-style
  Dataset that builds each item in `__getitem__` (as one read from disk
  would), so it goes through the DataLoader (`--workers`);
- model: two convolutions with BatchNorm, max-pooling and dropout;
- optimizer and schedule: SGD with momentum, a linear warm-up whose length is
  a hyperparameter, then a cosine decay to zero at the run's last step;
- `train_step`: gradient clipping at a norm that is a hyperparameter;
- `metrics`: accuracy; the search maximises it (`objective`, `direction`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hsmpi.algorithm.space import LogUniform, Uniform


class DigitImages(Dataset):
    """Some of the digits, as (1x8x8 float image in [0, 1], class) pairs made on request."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        self.pixels = pixels
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.pixels[i].reshape(1, 8, 8).astype(np.float32) / 16.0)
        return image, torch.tensor(int(self.labels[i]))


class DigitsCNN:
    """1,797 images, split 60/20/20 with the run seed; accuracy maximised, cross-entropy trained."""

    space = {
        "lr": LogUniform(1e-3, 0.3),
        "momentum": Uniform(0.5, 0.99),
        "weight_decay": LogUniform(1e-6, 1e-2),
        "warmup": Uniform(0.0, 0.3),  # the share of all training steps spent warming the learning rate up
        "clip": LogUniform(0.1, 10.0),  # the gradient norm is clipped to this
        "dropout": Uniform(0.0, 0.5),
    }
    objective = "accuracy"
    direction = "maximize"

    def data(self, seed: int) -> tuple[DigitImages, DigitImages, DigitImages]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(seed).permutation(len(y))
        a, b = int(round(0.6 * len(y))), int(round(0.8 * len(y)))
        return tuple(DigitImages(x[part], y[part]) for part in (order[:a], order[a:b], order[b:]))  # type: ignore

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Dropout(0.25), torch.nn.Linear(32 * 4 * 4, 10))

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])

    def scheduler(self, optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        total = steps_per_epoch * epochs
        warm = max(1, round(hp["warmup"] * total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batch: tuple[torch.Tensor, torch.Tensor], hp: dict[str, Any]) -> torch.Tensor:
        x, y = batch
        for layer in model.modules():  # the dropout rate is a hyperparameter of the member
            if isinstance(layer, torch.nn.Dropout):
                layer.p = hp["dropout"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["clip"])
        optimizer.step()
        return loss

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy": (output.argmax(dim=-1) == target).float().mean()}

    def ensemble_in(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)

    def ensemble_out(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.clamp_min(1e-12))
