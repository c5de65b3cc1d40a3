"""`--returns auto`'s margin, replayed on runs already made: what the returned model's test loss would have been
with another margin, read from the results files alone (no training).

A results file of a run with `--returns auto` holds both candidates' test losses (`test/best_loss`, the best
member's; `test/ensemble_loss`, the population average's) and the two scores the rule compared
(`test/ensemble_val_loss` and `test/member_val_cv`). So the rule "the average when its score is below the
member rule's by more than the margin" can be replayed for any margin.  Runs that select on a metric
(`--objective`, or a task whose objective is not its loss) hold scores of that metric and are left out.

    python -m benchmarks.quality.margins 'bench-out/runs/*/hsmpi/seed*/results.h5' --margins 0.05 0.02 0
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict

import h5py
import numpy as np

from benchmarks.quality.tables import wilcoxon_p
from hsmpi.engine.average import AUTO_MARGIN
from hsmpi.tasks import load_task


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.margins", description=__doc__.split("\n")[0])
    p.add_argument("pattern", help="a glob of results files (quote it)")
    p.add_argument("--margins", nargs="+", type=float, default=[AUTO_MARGIN, 0.02, 0.0, -0.01])
    args = p.parse_args(argv)
    runs = read(args.pattern)
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


if __name__ == "__main__":
    main()
