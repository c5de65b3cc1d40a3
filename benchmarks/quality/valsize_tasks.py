"""Tasks with the validation split's size varied and the training split's kept fixed: how the returned model's
rule fares as the validation split shrinks (docs/benchmarks.md, "The returned model against the size of the
validation split").

- `Val50` ... `Val200`: breast-cancer (classification, cross-entropy) with 255 training samples;
- `DiabetesVal60` ... `DiabetesVal180`: diabetes (regression, squared error) with 200 training samples.

The rest of each data set is the test split.

    mpirun -n 2 python -m hsmpi --task benchmarks/quality/valsize_tasks.py:Val50 --seed 0 --threads 1 --out runs/v50
"""

from __future__ import annotations

from typing import Any

from hsmpi.tasks._common import split_sizes
from hsmpi.tasks.breast_cancer import BreastCancer
from hsmpi.tasks.diabetes import Diabetes

SAMPLES, TRAIN = 569, 255  # breast-cancer's bundled data's size; the training split kept fixed
DIABETES_SAMPLES, DIABETES_TRAIN = 442, 200


class Val50(BreastCancer):
    n_val = 50
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES  # BreastCancer.data gives the training split the rest


class Val100(BreastCancer):
    n_val = 100
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES


class Val125(BreastCancer):
    n_val = 125
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES


class Val150(BreastCancer):
    n_val = 150
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES


class Val200(BreastCancer):
    n_val = 200
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES


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
