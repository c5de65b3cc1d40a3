"""Where a short run's wall time goes, part by part, on one rank (no MPI job needed).

    python scripts/breakdown_run.py --task regression1d -S 1 --repeats 6

Runs `hsmpi.run` once to warm up (imports, torch's lazy optimizer machinery),
then `--repeats` times with a stopwatch around each part of the job (training,
validation, setup, sharing, checkpoints, the final evaluations, the results
file, the exported state dicts), and prints the median milliseconds per run
beside a plain loop's whole time (the same task, model, optimizer and epochs,
then one validation and one test pass).  The stopwatches wrap hsmpi's own
functions from outside; nothing in the package is changed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hsmpi
from hsmpi import api, session

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_overhead import plain_loops  # noqa: E402

PARTS = [  # (owner, function name, label), outermost first
    (session.Search, "setup", "setup (data, members, checks)"),
    (session.Search, "train_local", "training and validation (every session)"),
    (session.Search, "select_and_share", "selection and sharing"),
    (api, "collect", "checkpoint: gathering the state"),
    (api.checkpoint, "save", "checkpoint: writing the file"),
    (api.lineage, "append", "lineage log"),
    (api, "finish", "finish (best model, test and population-average losses)"),
    (api, "write_results", "results file"),
    (api, "export_top", "best.pt and top-K state dicts"),
]


def _stopwatch(acc: dict[str, float], owner: Any, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            acc[label] += time.perf_counter() - start
    setattr(owner, name, timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="regression1d")
    p.add_argument("-S", "--population", type=int, default=1)
    p.add_argument("-M", "--epochs", type=int, default=30)
    p.add_argument("-m", "--sessions", type=int, default=6)
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    options = {"population": args.population, "epochs": args.epochs, "sessions": args.sessions, "threads": 1}
    acc: dict[str, float] = collections.defaultdict(float)
    for owner, name, label in PARTS:
        _stopwatch(acc, owner, name, label)
    runs: list[dict[str, float]] = []
    plain: list[float] = []
    for i in range(args.repeats + 1):
        acc.clear()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            hsmpi.run(args.task, out=tmp, log=None, **options)
            acc["whole run"] = time.perf_counter() - start
        plain.append(plain_loops(args.task, list(range(args.population)), args.epochs, 0, 64))
        if i > 0:  # the first run pays the process's one-time costs
            runs.append(dict(acc))
    median = {label: float(np.median([r.get(label, 0.0) for r in runs])) for _, _, label in PARTS}
    whole = float(np.median([r["whole run"] for r in runs]))
    named = sum(median.values())
    print(f"breakdown_run: task {args.task}, S={args.population} on one rank, M={args.epochs}, m={args.sessions}, "
          f"1 thread, median of {args.repeats} runs, torch {torch.__version__}\n")
    print("| part | ms per run |")
    print("|---|---|")
    for _, _, label in PARTS:
        print(f"| {label} | {median[label] * 1e3:.1f} |")
    print(f"| everything else (logging, small collectives, bookkeeping) | {(whole - named) * 1e3:.1f} |")
    print(f"| **whole hsmpi.run** | **{whole * 1e3:.1f}** |")
    print(f"| plain loop, same work (for scale) | {float(np.median(plain[1:])) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
