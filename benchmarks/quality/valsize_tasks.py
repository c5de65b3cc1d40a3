"""Tasks with the validation split's size varied and the training split's kept fixed: how the returned model's
rule fares as the validation split shrinks (docs/benchmarks.md, "The returned model against the size of the
validation split").

- `Val50` ... `Val200`: breast-cancer (classification, cross-entropy) with 255 training samples;
- `DiabetesVal60` ... `DiabetesVal180`: diabetes (regression, squared error) with 200 training samples;
- `Synth3Class` and `SynthSGD`: two tasks the rule was not chosen on, drawn from scikit-learn's generators
  with each seed, 300 training / 100 validation / 200 test samples: a three-class classification (Adam,
  cross-entropy) and a regression trained with SGD (momentum and weight decay searched); `Synth3Class150`
  and `Synth3Class200` have 150 and 200 validation samples (and 150 and 100 test), `SynthSGD200` 200
  validation samples (from 700 samples, so 200 test).

The rest of each data set is the test split.

    mpirun -n 2 python -m hsmpi --task benchmarks/quality/valsize_tasks.py:Val50 --seed 0 --threads 1 --out runs/v50
"""

from __future__ import annotations

from typing import Any

import torch

from hsmpi.algorithm.space import LogUniform, Uniform
from hsmpi.tasks._common import Classification, mlp, split_sizes
from hsmpi.tasks.breast_cancer import BreastCancer
from hsmpi.tasks.diabetes import Diabetes

SAMPLES, TRAIN = 569, 255  # breast-cancer's bundled data's size; the training split kept fixed
DIABETES_TRAIN = 200


def _breast_cancer_val(n_val: int) -> type[BreastCancer]:
    """BreastCancer with `n_val` validation samples and TRAIN training samples: its own `data` gives the
    training split what the validation and test splits leave."""
    return type(f"Val{n_val}", (BreastCancer,), {"n_val": n_val, "test_fraction": (SAMPLES - TRAIN - n_val) / SAMPLES})


Val50, Val100, Val125, Val150, Val200 = (_breast_cancer_val(n) for n in (50, 100, 125, 150, 200))


class _DiabetesVal(Diabetes):
    n_val = 0

    def data(self, seed: int) -> Any:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        return split_sizes(x, y, seed, DIABETES_TRAIN, self.n_val)


class DiabetesVal60(_DiabetesVal):
    n_val = 60


class DiabetesVal120(_DiabetesVal):
    n_val = 120


class DiabetesVal180(_DiabetesVal):
    n_val = 180


class Synth3Class(Classification):
    """600 samples of 20 features (8 informative, 4 redundant), three classes, 5% of labels flipped."""

    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "beta1": Uniform(0.5, 0.99),
        "weight_decay": LogUniform(1e-7, 1e-2),
    }

    n_val = 100

    def data(self, seed: int) -> Any:
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=600, n_features=20, n_informative=8, n_redundant=4, n_classes=3,
                                   flip_y=0.05, random_state=seed)
        return split_sizes(x, y, seed, 300, self.n_val)

    def model(self) -> torch.nn.Module:
        return mlp([20, 32, 32, 3])

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], 0.999), weight_decay=hp["weight_decay"])


class Synth3Class150(Synth3Class):
    """Synth3Class with 150 validation samples (and 150 test samples)."""

    n_val = 150


class Synth3Class200(Synth3Class):
    """Synth3Class with 200 validation samples (and 100 test samples)."""

    n_val = 200


class SynthSGD:
    """600 samples of 15 features (8 informative), a linear target with noise, MLP trained with SGD."""

    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "momentum": Uniform(0.0, 0.95),
        "weight_decay": LogUniform(1e-6, 1e-2),
    }

    n_samples, n_val = 600, 100

    def data(self, seed: int) -> Any:
        from sklearn.datasets import make_regression

        x, y = make_regression(n_samples=self.n_samples, n_features=15, n_informative=8, noise=30.0,
                               random_state=seed)
        return split_sizes(x, y, seed, 300, self.n_val)

    def model(self) -> torch.nn.Module:
        return mlp([15, 32, 32, 1])

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


class SynthSGD200(SynthSGD):
    """SynthSGD with 200 validation samples (and 100 more samples, so the test split keeps its 200): enough
    for `--returns auto` to choose members greedily."""

    n_samples, n_val = 700, 200
