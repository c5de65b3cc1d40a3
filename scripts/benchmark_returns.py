"""What the returned model costs: whole runs with `--returns member` and with another rule, alternated.

    mpirun -n 2 python scripts/benchmark_returns.py --tasks regression1d friedman1 -S 32 -M 60 --seeds 10 19
    mpirun -n 2 python scripts/benchmark_returns.py --returns average --tasks digits

The training is the same under every rule (the rule only decides what is
handed back at the end), so the difference in wall time is what the rule
adds: for `greedy`, S selection steps, each one MINLOC and one sum of a
member's validation outputs.  Each seed runs both ways, alternated, inside
one job, on every rank; rank 0 prints a Markdown table of the median
seconds per run, the ratio, and the median difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from mpi4py import MPI

import hsmpi


def timed(task: str, seed: int, returns: str, args: argparse.Namespace) -> float:
    """One run's wall time on every rank (the slowest rank's, as a job's is)."""
    world = MPI.COMM_WORLD
    folder = tempfile.mkdtemp(prefix="hsmpi-returns-") if world.rank == 0 else None
    folder = world.bcast(folder)
    world.Barrier()
    start = time.perf_counter()
    hsmpi.run(task, comm=world, population=args.population, epochs=args.epochs, sessions=args.sessions, seed=seed,
              returns=returns, threads=1, export_top=0, log=None, out=f"{folder}/{returns}")
    return float(world.allreduce(time.perf_counter() - start, op=MPI.MAX))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["regression1d"])
    p.add_argument("--returns", default="greedy", choices=["average", "greedy", "auto"],
                   help="the rule timed against `member` (default greedy)")
    p.add_argument("-S", "--population", type=int, default=32)
    p.add_argument("-M", "--epochs", type=int, default=60)
    p.add_argument("-m", "--sessions", type=int, default=6)
    p.add_argument("--seeds", nargs=2, type=int, default=[10, 19], metavar=("FIRST", "LAST"))
    args = p.parse_args()
    rows = []
    for task in args.tasks:
        timed(task, args.seeds[0], "member", args)  # warm-up: one-time imports charged to neither side
        seconds: dict[str, list[float]] = {"member": [], args.returns: []}
        for seed in range(args.seeds[0], args.seeds[1] + 1):
            order = ["member", args.returns] if seed % 2 else [args.returns, "member"]
            for rule in order:
                seconds[rule].append(timed(task, seed, rule, args))
        member, other = np.array(seconds["member"]), np.array(seconds[args.returns])
        rows.append(f"| {task} | {len(member)} | {np.median(member):.3f} | {np.median(other):.3f} | "
                    f"{np.median(other) / np.median(member):.3f} | {np.median(other - member) * 1e3:.0f} |")
    if MPI.COMM_WORLD.rank == 0:
        print(f"S={args.population}, M={args.epochs}, m={args.sessions}, {MPI.COMM_WORLD.size} ranks")
        print(f"| task | seeds | member s | {args.returns} s | ratio | difference ms (median of pairs) |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
