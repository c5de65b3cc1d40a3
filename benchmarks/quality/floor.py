"""How far each method's test loss is from the floor: the loss of the true function on the same test split.

Three of the benchmark's tasks draw their data from a generator whose truth is known, so the lowest expected
test loss any model could reach (the Bayes floor) can be computed for every seed's own test split:
- moons-schedule: the cross-entropy of the exact class posterior. make_moons puts 500 points of each class
  on its half-circle and adds Gaussian noise of sd `noise` to each coordinate, so a class's density is the
  mean of 500 Gaussians around its noise-free points;
- friedman1: the mean squared error of Friedman's function itself, in the standardised targets' units;
- sparse-regression: the same for make_regression's linear function (its coefficients, which the generator
  returns on request).

The floor is what is left when the model is perfect; the rest of a method's test loss (its excess) is what a
better search could still remove. Where methods tie, this says whether they tie at the floor (nothing left to
win) or above it (room, which none of them reaches).

    python -m benchmarks.quality.floor docs/data/batched-32x60-seeds-0-39-2026-12-06.csv \\
        docs/data/baselines-32x60-seeds-0-39-2026-12-06.csv --tasks moons-schedule
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import logsumexp

from benchmarks.quality.compare import cells_or_say, seeds_option
from hsmpi.tasks import _common
from hsmpi.tasks.friedman1 import Friedman1
from hsmpi.tasks.moons_schedule import MoonsSchedule
from hsmpi.tasks.sparse_regression import SparseRegression


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and test indices of `n` samples as the tasks' `split` draws them for `seed`."""
    train, _, test = _common.split_indices(n, seed, *_common.fraction_sizes(n))
    return train, test


def moons_floor(seed: int, task: MoonsSchedule | None = None) -> float:
    """The mean cross-entropy of the exact class posterior on moons-schedule's test split of `seed`."""
    from sklearn.datasets import make_moons

    task = task or MoonsSchedule()
    x, y = make_moons(n_samples=task.n_samples, noise=task.noise, random_state=seed)
    centres, labels = make_moons(n_samples=task.n_samples, noise=0.0, shuffle=False)
    _, test = split_indices(len(x), seed)
    pts = x[test]
    dist = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1) / (2 * task.noise ** 2)
    # log p(x, class) up to a constant shared by both classes: the class's share times its mean Gaussian
    joint = np.stack([logsumexp(-dist[:, labels == c], axis=1) + np.log((labels == c).mean()) for c in (0, 1)], 1)
    posterior = joint - logsumexp(joint, axis=1, keepdims=True)
    return float(-posterior[np.arange(len(test)), y[test]].mean())


def friedman_function(x: np.ndarray) -> np.ndarray:
    """Friedman #1 without its noise: 10 sin(pi x0 x1) + 20 (x2 - 1/2)^2 + 10 x3 + 5 x4."""
    return 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]


def regression_floor(x: np.ndarray, y: np.ndarray, truth: np.ndarray, seed: int) -> float:
    """The mean squared error of the true function on the test split, in the units the task's loss sees
    (targets standardised with the training split's mean and sd, as `split` does)."""
    train, test = split_indices(len(x), seed)
    scale = y[train].std() + 1e-8
    return float((((y[test] - truth[test]) / scale) ** 2).mean())


def friedman1_floor(seed: int, task: Friedman1 | None = None) -> float:
    """friedman1's floor for `seed`: its function's own squared error on the test split."""
    from sklearn.datasets import make_friedman1

    task = task or Friedman1()
    x, y = make_friedman1(n_samples=task.n_samples, n_features=task.n_features, noise=task.noise,
                          random_state=seed)
    return regression_floor(x, y, friedman_function(x), seed)


def sparse_regression_floor(seed: int, task: SparseRegression | None = None) -> float:
    """sparse-regression's floor for `seed`: the generator's linear function's squared error on the test split."""
    from sklearn.datasets import make_regression

    task = task or SparseRegression()
    x, y, coef = make_regression(n_samples=task.n_samples, n_features=task.n_features,
                                 n_informative=task.n_informative, noise=task.noise, random_state=seed, coef=True)
    return regression_floor(x, y, x @ coef, seed)


FLOORS: dict[str, Callable[[int], float]] = {
    "moons-schedule": moons_floor,
    "friedman1": friedman1_floor,
    "sparse-regression": sparse_regression_floor,
}


def floor_rows(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], task: str, methods: list[str]) -> list[str]:
    """Markdown: per method, its median test loss, the median floor of its seeds, its median excess over the
    floor (absolute and as a share of the floor), and how many of its seeds lie within 5% of the floor."""
    present = [m for m in methods if cells.get((task, m))]
    seeds = sorted({s for m in present for s in cells[(task, m)]})
    floor = {s: FLOORS[task](s) for s in seeds}
    lines = [f"### {task}", "",
             "| method | seeds | median test loss | median floor | median excess | excess / floor | "
             "seeds within 5% of the floor |",
             "|---|---|---|---|---|---|---|"]
    for m in present:
        got = cells[(task, m)]
        excess = [got[s]["test"] - floor[s] for s in got]
        share = [got[s]["test"] / floor[s] - 1 for s in got]
        lines.append(f"| {m} | {len(got)} | {statistics.median(v['test'] for v in got.values()):.4g} | "
                     f"{statistics.median(floor[s] for s in got):.4g} | "
                     f"{statistics.median(excess):.3g} | {statistics.median(share):.1%} | "
                     f"{sum(r <= 0.05 for r in share)}/{len(got)} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """The command line: `floor_rows` for each task the files hold that has a known floor; 2 and one error line
    when the files cannot be read or hold none of those tasks."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.floor", description=__doc__.split("\n")[0])
    p.add_argument("cells", nargs="+", help="cells.csv files (a run's, or those in docs/data)")
    p.add_argument("--tasks", nargs="+", choices=list(FLOORS), help="only these tasks (default: each the files hold)")
    p.add_argument("--methods", nargs="+", help="only these methods, in this order (default: all)")
    seeds_option(p)
    args = p.parse_args(argv)
    cells = cells_or_say("benchmarks.quality.floor", args.cells, args.seeds)
    if cells is None:
        return 2
    tasks = [t for t in (args.tasks or FLOORS) if any(task == t for task, _ in cells)]
    if not tasks:
        print(f"benchmarks.quality.floor: the cells hold none of the tasks with a known floor ({', '.join(FLOORS)})",
              file=sys.stderr)
        return 2
    methods = args.methods or sorted(dict.fromkeys(m for _, m in cells), key=lambda m: m != "hsmpi")
    for task in tasks:
        print("\n".join(floor_rows(cells, task, methods)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
