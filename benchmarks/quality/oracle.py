"""What the final population holds on the test split, against the model hsmpi returns.

Runs hsmpi with the benchmark's settings (the main table's hsmpi, in this one process: its results do not
depend on the number of ranks, so the returned model's test loss is the benchmark's cell to the bit), then
scores on each seed's test split:
- the model the run returned (the benchmark's cell);
- the average of every final member, and the final member best on validation;
- the final member best on the test split itself: an oracle no method can use, which bounds what any rule
  returning one of these members could reach (an ensemble of them can go below it);
- the median final member, and the task's Bayes floor where it is known (`benchmarks.quality.floor`).

Where the oracle is barely below what was returned, no rule picking one member can gain much: the gain has
to come from training better members, or from combining them.

    python -m benchmarks.quality.oracle --task moons-schedule -S 32 -M 60 --seeds 20
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
from typing import Any

import numpy as np
import torch

from benchmarks.quality import methods
from benchmarks.quality.floor import FLOORS
from benchmarks.quality.runner import hsmpi_defaults
from benchmarks.quality.trial import Problem
from hsmpi.engine.average import Average
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import BUILTIN, task_loss

COLUMNS = ["returned", "average", "best_on_val", "oracle", "median_member", "floor"]
LABELS = {"returned": "what the run returned (the benchmark's cell)", "average": "the average of every final member",
          "best_on_val": "the final member best on validation",
          "oracle": "the final member best on test (an oracle)", "median_member": "the median final member",
          "floor": "the Bayes floor"}


def _loss(model: torch.nn.Module, data: Any, task: Any) -> float:
    with torch.no_grad():
        x, y = data.tensors
        value = float(task_loss(task, model(x), y))
    return value if math.isfinite(value) else math.nan


def population_on_test(task_name: str, seed: int, population: int, epochs: int, sessions: int,
                       workdir: str) -> dict[str, float]:
    """One seed: hsmpi run as the benchmark runs it, in `workdir`, and the final population scored."""
    problem = Problem(task_name, seed, population, epochs, sessions, workdir=workdir)
    outcome = methods.hsmpi_method(problem, SerialComm(), hsmpi_defaults())
    path, task = outcome.extra["results"], problem.task
    _, val, test = task.data(seed)
    members = [Average.from_results(path, task, "cpu", members=[i]).eval() for i in range(population)]
    on_val = np.array([_loss(m, val, task) for m in members])
    on_test = np.array([_loss(m, test, task) for m in members])
    everyone = Average.from_results(path, task, "cpu", members=list(range(population))).eval()
    floor = FLOORS.get(task_name)
    return {"returned": outcome.test, "average": _loss(everyone, test, task),
            "best_on_val": float(on_test[np.nanargmin(on_val)]), "oracle": float(np.nanmin(on_test)),
            "median_member": float(np.nanmedian(on_test)), "floor": floor(seed) if floor else math.nan}


def table(rows: dict[int, dict[str, float]]) -> list[str]:
    """Markdown: each column's median over the seeds, relative to the returned model's, and the seeds where it is
    below the returned model's test loss."""
    returned = statistics.median(r["returned"] for r in rows.values())
    lines = ["| model | median test loss | against the returned | seeds below the returned |", "|---|---|---|---|"]
    for key in COLUMNS:
        values = [r[key] for r in rows.values() if math.isfinite(r[key])]
        if not values:
            continue
        median = statistics.median(values)
        below = "-" if key == "returned" else f"{sum(r[key] < r['returned'] for r in rows.values())}/{len(rows)}"
        lines.append(f"| {LABELS[key]} | {median:.4g} | {median / returned - 1:+.1%} | {below} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The command line: run each seed, write `--csv` if asked, print the table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.oracle", description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=sorted(BUILTIN), help="a built-in task")
    p.add_argument("-S", "--population", type=int, default=16, help="members S (default 16)")
    p.add_argument("-M", "--epochs", type=int, default=30, help="epochs M (default 30)")
    p.add_argument("-m", "--sessions", type=int, default=6, help="sessions m (default 6)")
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (default 0)")
    p.add_argument("--csv", help="also write each seed's losses to this file")
    args = p.parse_args(argv)
    if args.population < 2 or args.epochs < 1 or not 1 <= args.sessions <= args.epochs or args.seeds < 1:
        p.error("need -S 2 or more, -M 1 or more, 1 <= -m <= -M and --seeds 1 or more")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hsmpi-oracle-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows[seed] = population_on_test(args.task, seed, args.population, args.epochs, args.sessions,
                                            os.path.join(tmp, f"seed{seed}"))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[seed].items()), file=sys.stderr,
                  flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["task", "seed", *COLUMNS])
            out.writerows([args.task, s, *(r[k] for k in COLUMNS)] for s, r in rows.items())
    print(f"{args.task}, S={args.population}, M={args.epochs}, m={args.sessions}, seeds {args.first_seed}-"
          f"{args.first_seed + args.seeds - 1}\n")
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
