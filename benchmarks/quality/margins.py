"""`--returns auto`'s margin, replayed on runs already made: what the returned model's test loss would have been
with another margin, read from the results files alone (no training).

A results file of a run with `--returns auto` holds both candidates' test losses (`test/best_loss`, the best
member's; `test/ensemble_loss`, the population average's) and the two scores the rule compared
(`test/ensemble_val_loss` and `test/member_val_cv`). So the rule "the average when its score is below the
member rule's by more than the margin" can be replayed for any margin.  Runs that select on a metric
(`--objective`, or a task whose objective is not its loss) hold scores of that metric and are left out.

    python -m benchmarks.quality.margins 'bench-out/runs/*/hsmpi/seed*/results.h5' --margins 0.05 0.02 0

`--paired Z ...` replays a rule that weighs the difference against its noise instead: the final population is
rebuilt from the file's weights, and on the validation split the average's per-sample losses are paired with
the cross-validated member rule's (on each of the 5 folds, the member best on the other 4).  The average is
returned unless the member rule is better by more than Z standard errors of the mean difference (Z = 0: the
average when it is better at all; Z > 0 favours the average; Z < 0 asks more of it).
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict

import h5py
import numpy as np
import torch

from benchmarks.quality.tables import wilcoxon_p
from hsmpi.engine.average import AUTO_MARGIN, FOLDS
from hsmpi.engine.data import Data
from hsmpi.tasks import load_task, task_loss


def read(pattern: str) -> dict[tuple[str, int], dict[int, tuple[float, float, float, float]]]:
    """(task, S) -> seed -> (average's score, member rule's score, member's test loss, average's test loss)."""
    runs: dict[tuple[str, int], dict[int, tuple[float, float, float, float]]] = defaultdict(dict)
    for path in sorted(glob.glob(pattern)):
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
            test = f.get("test")
            if config["returns"] != "auto" or config["objective"] or test is None or "member_val_cv" not in test:
                continue
            if getattr(load_task(config["task"]), "objective", "loss") != "loss":
                continue
            runs[config["task"], config["population"]][config["seed"]] = tuple(  # type: ignore[assignment]
                float(test[n][()]) for n in ("ensemble_val_loss", "member_val_cv", "best_loss", "ensemble_loss"))
    return runs


def paired(path: str) -> tuple[float, float]:
    """The mean over the validation split of (average's loss - member rule's loss) per sample, and its standard
    error, from the final population in results file `path` (every member averaged, as without --average-top)."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["config"])
        weights = {n: f["population/weights"][n][()] for n in f["population/weights"]}
    task = load_task(config["task"])
    _, val, _ = task.data(config["seed"])
    data = Data(val, torch.device("cpu"))
    inputs, targets = [torch.cat(t) for t in zip(*data.in_order())]
    into = getattr(task, "ensemble_in", lambda out: out)
    back = getattr(task, "ensemble_out", lambda mean: mean)
    outputs = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for i in range(config["population"]):
            model = task.model()
            model.load_state_dict({n: torch.from_numpy(np.asarray(w[i])) for n, w in weights.items()})
            outputs.append(model.eval()(inputs))
        mean = back(torch.stack([into(o).double() for o in outputs]).mean(0).float())

        def per_sample(out: torch.Tensor) -> np.ndarray:
            return np.array([float(task_loss(task, out[j:j + 1], targets[j:j + 1])) for j in range(len(targets))])
        losses = np.stack([per_sample(o) for o in outputs])  # members x samples
        averaged = per_sample(mean)
    rule = np.empty(len(targets))
    for fold in range(FOLDS):
        mask = np.arange(len(targets)) % FOLDS == fold
        rule[mask] = losses[int(np.argmin(losses[:, ~mask].sum(axis=1))), mask]
    d = averaged - rule
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.margins", description=__doc__.split("\n")[0])
    p.add_argument("pattern", help="a glob of results files (quote it)")
    p.add_argument("--margins", nargs="+", type=float, default=[AUTO_MARGIN, 0.02, 0.0, -0.01])
    p.add_argument("--paired", nargs="+", type=float, metavar="Z", help="replay the paired rule at these Z")
    args = p.parse_args(argv)
    runs = read(args.pattern)
    if args.paired:
        return paired_table(args.pattern, runs, args.paired)
    print("| task | S | seeds | " + " | ".join(f"margin {m:g}" for m in args.margins) + " |")
    print("|---|---|---|" + "---|" * len(args.margins))
    for (task, population), seeds in sorted(runs.items()):
        a = np.array([seeds[s] for s in sorted(seeds)])
        relative = (a[:, 0] - a[:, 1]) / np.abs(a[:, 1])
        now = np.where(relative < -AUTO_MARGIN, a[:, 3], a[:, 2])
        cells = []
        for margin in args.margins:
            test = np.where(relative < -margin, a[:, 3], a[:, 2])
            better, worse = int((test < now).sum()), int((test > now).sum())
            pvalue = wilcoxon_p(now, test)
            same = pvalue != pvalue  # NaN: no seed differs
            cells.append(f"{np.median(test):.4g} ({better}/{worse}" + (")" if same else f", p {pvalue:.2f})"))
        print(f"| {task} | {population} | {len(a)} | " + " | ".join(cells) + " |")


def paired_table(pattern: str, runs: dict[tuple[str, int], dict[int, tuple[float, float, float, float]]],
                 zs: list[float]) -> None:
    """The paired rule's table: median test loss at each Z (seeds better/worse than the default margin, p)."""
    paths: dict[tuple[str, int, int], str] = {}
    for path in sorted(glob.glob(pattern)):
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
        paths[config["task"], config["population"], config["seed"]] = path
    print("| task | S | seeds | " + " | ".join(f"Z = {z:g}" for z in zs) + " |")
    print("|---|---|---|" + "---|" * len(zs))
    for (task, population), seeds in sorted(runs.items()):
        order = sorted(seeds)
        a = np.array([seeds[s] for s in order])
        now = np.where((a[:, 0] - a[:, 1]) / np.abs(a[:, 1]) < -AUTO_MARGIN, a[:, 3], a[:, 2])
        diffs = np.array([paired(paths[task, population, s]) for s in order])
        cells = []
        for z in zs:
            test = np.where(diffs[:, 0] < z * diffs[:, 1], a[:, 3], a[:, 2])
            better, worse = int((test < now).sum()), int((test > now).sum())
            pvalue = wilcoxon_p(now, test)
            same = pvalue != pvalue
            cells.append(f"{np.median(test):.4g} ({better}/{worse}" + (")" if same else f", p {pvalue:.2f})"))
        print(f"| {task} | {population} | {len(a)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
