"""Shared pieces of the built-in tasks: splits and small MLPs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def split(x: np.ndarray, y: np.ndarray, seed: int, fractions: tuple[float, float] = (0.6, 0.2),
          standardize_y: bool = True) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Shuffle with `seed`, split train/val/test, standardise with the training split's statistics."""
    return split_sizes(x, y, seed, *fraction_sizes(len(x), fractions), standardize_y)


def fraction_sizes(n: int, fractions: tuple[float, float] = (0.6, 0.2)) -> tuple[int, int]:
    """The training and validation sizes `split` gives `n` samples."""
    return int(round(fractions[0] * n)), int(round(fractions[1] * n))


def split_indices(n: int, seed: int, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training, validation and test indices of `n` samples that `split_sizes` draws with `seed`."""
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def split_sizes(x: np.ndarray, y: np.ndarray, seed: int, n_train: int, n_val: int,
                standardize_y: bool = True) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """`split` with the sizes given: `n_train` and `n_val` samples, the rest for test."""
    if n_train < 1 or n_val < 1 or n_train + n_val >= len(x):
        raise ValueError(f"cannot split {len(x)} samples into {n_train} train, {n_val} val and a test split")
    parts = split_indices(len(x), seed, n_train, n_val)
    x = (x - x[parts[0]].mean(0)) / _scale(x[parts[0]].std(0))
    if standardize_y and y.dtype.kind == "f":
        y = (y - y[parts[0]].mean()) / (y[parts[0]].std() + 1e-8)
    def make(idx: np.ndarray) -> TensorDataset:
        ty = torch.as_tensor(y[idx])
        ty = ty.float().reshape(-1, 1) if ty.dtype.is_floating_point else ty.long()
        return TensorDataset(torch.as_tensor(x[idx], dtype=torch.float32), ty)
    return make(parts[0]), make(parts[1]), make(parts[2])


def _scale(std: np.ndarray) -> np.ndarray:
    """What standardising divides by: a feature that is constant on the training split (a corner pixel
    that is always blank) is only centred.  Dividing by its zero spread (plus a tiny epsilon) would turn
    a validation or test sample where it is not blank into an input of about 1e8.  The other features keep
    the epsilon they always had, so their data is the same to the bit."""
    return np.where(std > 0, std + 1e-8, 1.0)


def mlp(sizes: list[int], activation: type[torch.nn.Module] = torch.nn.ReLU,
        dropout: float = 0.0) -> torch.nn.Sequential:
    """Linear layers of the given sizes with an activation (and dropout) between them."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


class Classification:
    """The hooks of a classification task trained on cross-entropy: accuracy as a metric, and the
    population average taken over class probabilities."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy": (output.argmax(dim=-1) == target).float().mean()}

    def ensemble_in(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)

    def ensemble_out(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.clamp_min(1e-12))
