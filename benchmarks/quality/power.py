"""How many seeds would separate the methods: the benchmark's tests replayed on more seeds, drawn from the cells.

Where hsmpi and a method tie at 40 seeds, the question is whether more seeds would tell them apart or whether
the two are as good as each other. This draws seed sets of each size from the stored cells, with replacement,
and applies the benchmark's own tests to each: from the seeds hsmpi and a method both ran, the share of draws in
which hsmpi is significantly better than the method (`tables.separates` on the drawn pairs, Wilcoxon p < 0.1) or
significantly worse; from the seeds every method ran (one draw for all of them), the share in which hsmpi's
median is the lowest of all (`tables.lowest_share`).

It treats the observed seeds as the population, so it answers "if the seeds to come look like these", not more:
a tie whose observed differences lean one way leans the same way here. A share near half at every size is a
toss that no number of seeds will settle.

    python -m benchmarks.quality.power docs/data/batched-32x60-seeds-0-39-2026-12-06.csv \\
        docs/data/baselines-32x60-seeds-0-39-2026-12-06.csv --tasks moons-schedule --sizes 40 80 160
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

from benchmarks.quality import tables
from benchmarks.quality.compare import cells_or_say, seeds_option

Cells = dict[tuple[str, str], dict[int, dict[str, Any]]]


def separation_shares(ref: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]], size: int,
                      draws: int, seed: int = 0) -> tuple[float, float]:
    """The shares of `draws` seed sets of `size` paired seeds (drawn with replacement from the seeds both ran)
    in which the reference is significantly better than the other method, and significantly worse. NaN, NaN
    with fewer than two shared seeds."""
    a, b = tables.paired_values(ref, other)
    if len(a) < 2:
        return math.nan, math.nan
    picks = np.random.default_rng(seed).integers(0, len(a), size=(draws, size))
    signs = [tables.separates(int((a[i] < b[i]).sum()), int((a[i] > b[i]).sum()), tables.wilcoxon_p(a[i], b[i]))
             for i in picks]
    return signs.count(1) / draws, signs.count(-1) / draws


def power_rows(cells: Cells, tasks: list[str], methods: list[str], sizes: list[int], draws: int,
               reference: str = "hsmpi") -> list[str]:
    """Markdown: per task, one row per other method with its observed paired count and p, then the share of
    drawn seed sets of each size in which the reference is significantly better (and, in brackets, worse);
    last, the share in which the reference's median is the lowest of all methods."""
    head = " | ".join(f"{n} seeds" for n in sizes)
    lines = []
    for task in tasks:
        ref = cells.get((task, reference))
        present = [m for m in methods if m != reference and cells.get((task, m))]
        if not ref or not present:
            continue
        lines += [f"### {task}", "",
                  f"| method | observed: {reference} better / worse, p | {head} |",
                  "|---|---|" + "---|" * len(sizes)]
        for m in present:
            better, worse, p = tables.paired_counts(ref, cells[(task, m)])
            shares = [separation_shares(ref, cells[(task, m)], n, draws) for n in sizes]
            lines.append(f"| {m} | {better}/{worse}, {tables.format_p(p)} | "
                         + " | ".join(f"{up:.0%} ({down:.0%})" for up, down in shares) + " |")
        lowest = [tables.lowest_share(cells, task, [reference] + present, reference, draws, size=n) for n in sizes]
        lines += [f"| {reference}'s median the lowest of all | | " + " | ".join(f"{s:.0%}" for s in lowest) + " |",
                  ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """The command line: the tables of `power_rows` for the cells files given; 2 and one error line when the
    files cannot be read or hold nothing to compare."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.power", description=__doc__.split("\n")[0])
    p.add_argument("cells", nargs="+", help="cells.csv files (a run's, or those in docs/data)")
    p.add_argument("--tasks", nargs="+", help="only these tasks, in this order (default: all, as first read)")
    p.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    seeds_option(p)
    p.add_argument("--sizes", nargs="+", type=int, default=[40, 80, 160, 320],
                   help="seed counts to draw (default: 40 80 160 320)")
    p.add_argument("--draws", type=int, default=500, help="seed sets drawn per size (default: 500)")
    args = p.parse_args(argv)
    if min(args.sizes) < 2 or args.draws < 1:
        p.error("--sizes must be 2 or more seeds and --draws at least 1")
    cells = cells_or_say("benchmarks.quality.power", args.cells, args.seeds)
    if cells is None:
        return 2
    methods = args.methods or sorted(dict.fromkeys(m for _, m in cells), key=lambda m: m != "hsmpi")
    if "hsmpi" not in methods:
        print("benchmarks.quality.power: --methods must include hsmpi, the method the others are compared with",
              file=sys.stderr)
        return 2
    tasks = args.tasks or list(dict.fromkeys(t for t, _ in cells))
    missing = [t for t in tasks if not cells.get((t, "hsmpi")) or
               not any(cells.get((t, m)) for m in methods if m != "hsmpi")]
    if missing:
        print(f"benchmarks.quality.power: no cells of hsmpi and another method for {', '.join(missing)}",
              file=sys.stderr)
        return 2
    print(f"Each entry: the share of {args.draws} drawn seed sets of that size in which hsmpi is significantly "
          "better than the method; in brackets, significantly worse. Drawn with replacement from the seeds "
          "each pair ran.\n")
    print("\n".join(power_rows(cells, tasks, methods, args.sizes, args.draws)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
