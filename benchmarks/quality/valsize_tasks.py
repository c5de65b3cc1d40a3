"""breast-cancer with 255 training samples and a validation split of 50, 100 or 200 (the rest is test): how the
returned model's rule fares as the validation split shrinks (docs/benchmarks.md, "The returned model against
the size of the validation split").

    mpirun -n 2 python -m hsmpi --task benchmarks/quality/valsize_tasks.py:Val50 --seed 0 --threads 1 --out runs/v50
"""

from __future__ import annotations

from hsmpi.tasks.breast_cancer import BreastCancer

SAMPLES, TRAIN = 569, 255  # the bundled data's size; the training split kept fixed


class Val50(BreastCancer):
    n_val = 50
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES  # BreastCancer.data gives the training split the rest


class Val100(BreastCancer):
    n_val = 100
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES


class Val200(BreastCancer):
    n_val = 200
    test_fraction = (SAMPLES - TRAIN - n_val) / SAMPLES
