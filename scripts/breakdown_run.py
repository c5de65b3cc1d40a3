"""Where a short run's wall time goes, part by part, on each rank.

    python scripts/breakdown_run.py --task regression1d -S 1 --repeats 9
    mpirun -n 2 python scripts/breakdown_run.py --task regression1d --repeats 11

Runs `hsmpi.run` once to warm up (imports, torch's lazy optimizer machinery),
then `--repeats` times with a stopwatch around each part of the job (training,
validation, setup, sharing, checkpoints, the final evaluations, the results
file, the exported state dicts), and prints the median milliseconds per run
for every rank beside plain loops' whole time (each rank's members: the same
task, model, optimizer and epochs, then one validation and one test pass).
Under mpirun the ranks start each run together (a barrier) and "whole" is the
time until the last rank is done; a part that includes waiting for another
rank (selection and sharing, finish) shows that wait too.  The stopwatches
wrap hsmpi's own functions from outside; nothing in the package is changed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hsmpi
from hsmpi.engine import finish, observers, search
from hsmpi.engine import population as populations
from hsmpi.io import export, lineage
from hsmpi.parallel.comm import world

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_overhead import plain_loops  # noqa: E402

PARTS = [  # (owner, function name, label), outermost first
    (populations, "prepare", "setup (data, checks)"),
    (search.Search, "start", "setup (members, first hyperparameters)"),
    (populations.Population, "train", "training (every session)"),
    (search.Search, "evaluate", "validation (every session)"),
    (search.Search, "select", "selection: winner and plan"),
    (search.Search, "share", "sharing the donors' states"),
    (search.Search, "resample", "new hyperparameters to the copies"),
    (observers.Checkpoints, "begin", "checkpoint: streams and copies (the shard is written in the background)"),
    (observers.Checkpoints, "complete", "checkpoint: waiting for the shards, the manifest"),
    (lineage, "append", "lineage log"),
    (finish, "returned_model", "finish (best model, test and population-average losses)"),
    (finish, "write_part", "this rank's population file"),
    (finish, "write_results", "results file"),
    (export, "write_described", "best.pt and top.json"),
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
    p.add_argument("-S", "--population", type=int, default=None, help="default: one member per rank")
    p.add_argument("-M", "--epochs", type=int, default=30)
    p.add_argument("-m", "--sessions", type=int, default=6)
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()
    comm = world()
    population = args.population or comm.size
    if population % comm.size:
        p.error(f"-S {population} must be a multiple of the {comm.size} ranks")
    k = population // comm.size
    mine = list(range(comm.rank * k, (comm.rank + 1) * k))
    torch.set_num_threads(1)
    options = {"population": population, "epochs": args.epochs, "sessions": args.sessions, "threads": 1}
    acc: dict[str, float] = collections.defaultdict(float)
    for owner, name, label in PARTS:
        _stopwatch(acc, owner, name, label)
    runs: list[dict[str, float]] = []
    for i in range(args.repeats + 1):
        acc.clear()
        tmp = comm.bcast(tempfile.mkdtemp() if comm.is_root else None)
        comm.barrier()
        start = time.perf_counter()
        hsmpi.run(args.task, out=tmp, log=None, **options)
        acc["own"] = time.perf_counter() - start
        acc["whole"] = comm.allreduce_max(time.perf_counter() - start)  # until the last rank is done
        if comm.is_root:
            shutil.rmtree(tmp)
        acc["plain"] = comm.allreduce_max(plain_loops(args.task, mine, args.epochs, 0, 64))
        if i > 0:  # the first run pays the process's one-time costs
            runs.append(dict(acc))
    labels = [label for _, _, label in PARTS]
    mine_median = {label: float(np.median([r.get(label, 0.0) for r in runs])) for label in [*labels, "own", "whole",
                                                                                             "plain"]}
    medians = comm.gather(mine_median)
    if not comm.is_root:
        return
    assert medians is not None
    ranks = range(comm.size)
    print(f"breakdown_run: task {args.task}, S={population} on {comm.size} rank(s), M={args.epochs}, "
          f"m={args.sessions}, 1 thread per rank, median of {args.repeats} runs, torch {torch.__version__}\n")
    print("| part | " + " | ".join(f"rank {r} (ms per run)" if comm.size > 1 else "ms per run" for r in ranks) + " |")
    print("|---|" + "---|" * comm.size)

    def row(label: str, values: list[float], bold: bool = False) -> None:
        cells = [f"**{v * 1e3:.1f}**" if bold else f"{v * 1e3:.1f}" for v in values]
        print(f"| {f'**{label}**' if bold else label} | " + " | ".join(cells) + " |")

    for label in labels:
        row(label, [medians[r][label] for r in ranks])
    row("everything else (logging, small collectives, bookkeeping)",
        [medians[r]["own"] - sum(medians[r][label] for label in labels) for r in ranks])
    if comm.size > 1:
        row("this rank's hsmpi.run", [medians[r]["own"] for r in ranks])
    row("whole hsmpi.run", [medians[r]["whole"] for r in ranks], bold=True)
    row("plain loops, same work (slowest rank, for scale)", [medians[r]["plain"] for r in ranks])


if __name__ == "__main__":
    main()
