"""breast-cancer with 255 training samples and a validation split of 50, 100 or 200 (the rest is test): how the
returned model's rule fares as the validation split shrinks (docs/benchmarks.md, "The returned model against
the size of the validation split").

    mpirun -n 2 python -m hsmpi --task benchmarks/quality/valsize_tasks.py:Val50 --seed 0 --threads 1 --out runs/v50
"""

from __future__ import annotations

from torch.utils.data import TensorDataset

from hsmpi.tasks._common import split_sizes
from hsmpi.tasks.breast_cancer import BreastCancer


class _FixedTrain(BreastCancer):
    n_train = 255

    def data(self, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        return split_sizes(x, y, seed, self.n_train, self.n_val)


class Val50(_FixedTrain):
    n_val = 50


class Val100(_FixedTrain):
    n_val = 100


class Val200(_FixedTrain):
    n_val = 200
