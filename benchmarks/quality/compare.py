"""The benchmark's medians and goal check, remade from `cells.csv` files alone (no training).

A table in docs/benchmarks.md often joins the cells of several runs (each method where it ran, each seed set
in its own run); their `cells.csv` files are in docs/data. This reads any number of them and prints what
`results.md` prints from a run's own cells: the median test loss per task and method, then hsmpi against
each method (the lowest median, in what share of resampled seed sets hsmpi's is the lowest, who is
significantly better or worse on the paired seeds, the IQRs, the seconds per cell against Propulate's).

    python -m benchmarks.quality.compare docs/data/every-method-32x60-seeds-0-19-2026-12-06.csv \\
        docs/data/hsmpi-propulate-32x60-seeds-0-9-2026-12-05.csv docs/data/wall-clock-32x60-2026-12-05.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from typing import Any

from benchmarks.quality import tables


class CellsError(ValueError):
    """A cells file that cannot be read, or two files that disagree on one cell."""


def read_cells(paths: list[str]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(task, method) -> seed -> {"test", "seconds"} from `cells.csv` files. A cell in two files must have the
    same test loss in both (the same run's cells, copied); two different values are an error, not a choice."""
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    where: dict[tuple[str, str, int], str] = {}
    for path in paths:
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
                header = list(rows[0]) if rows else []
        except OSError as e:
            raise CellsError(f"cannot read {path}: {e.strerror}") from None
        if tuple(header[:len(tables.CSV_COLUMNS)]) != tables.CSV_COLUMNS:
            raise CellsError(f"{path} is not a benchmark cells file: its columns must start with "
                             f"{','.join(tables.CSV_COLUMNS)}")
        for line, row in enumerate(rows, start=2):
            try:
                task, method, seed = row["task"], row["method"], int(row["seed"])
                cell = {"test": float(row["test_loss"]), "seconds": float(row["seconds"])}
            except (TypeError, ValueError):
                raise CellsError(f"{path}, line {line}: not a cell ({', '.join(map(str, row.values()))})") from None
            held = cells.setdefault((task, method), {}).get(seed)
            if held is not None and held["test"] != cell["test"]:
                raise CellsError(f"{task} {method} seed {seed}: test loss {held['test']!r} in "
                                 f"{where[task, method, seed]} but {cell['test']!r} in {path}")
            cells[(task, method)].setdefault(seed, cell)
            where.setdefault((task, method, seed), path)
    return cells


def seed_range(text: str) -> range:
    """`--seeds`' value: "A-B" (both included) or one seed "A", as a range; argparse's error for anything else."""
    first, dash, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if dash else first)
    except ValueError:
        lo, hi = -1, -1
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed range such as 10-39 (first <= last, both 0 or more)")
    return range(lo, hi + 1)


def only_seeds(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], seeds: range | None
               ) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """The cells of the seeds in `seeds` (None: all of them); a task's method left with no seed is dropped."""
    if seeds is None:
        return cells
    kept = {key: {s: c for s, c in by_seed.items() if s in seeds} for key, by_seed in cells.items()}
    return {key: by_seed for key, by_seed in kept.items() if by_seed}


def read_hsmpi_cells(paths: list[str], seeds: range | None = None
                     ) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """`read_cells` of the seeds in `seeds` (None: all), for compare and power: cells without an hsmpi row leave
    nothing to compare with, a CellsError."""
    cells = only_seeds(read_cells(paths), seeds)
    if not any(m == "hsmpi" for _, m in cells):
        where = "" if seeds is None else f" of seeds {seeds.start}-{seeds.stop - 1}"
        raise CellsError(f"the cells hold no hsmpi rows{where} to compare the methods with")
    return cells


def cells_or_say(prog: str, paths: list[str], seeds: range | None
                 ) -> dict[tuple[str, str], dict[int, dict[str, Any]]] | None:
    """`read_hsmpi_cells` for a command line (compare, power, floor): None after one error line, `prog: ...`,
    when the files cannot be read or hold nothing to compare."""
    try:
        return read_hsmpi_cells(paths, seeds)
    except CellsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def seeds_option(p: argparse.ArgumentParser) -> None:
    """The `--seeds` option that compare, power and floor share."""
    p.add_argument("--seeds", type=seed_range, metavar="A-B",
                   help="only the cells of seeds A to B, both included, such as 10-39 for confirmation seeds "
                        "(default: every seed the files hold)")


def report(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: list[str] | None = None,
           methods: list[str] | None = None, paired: bool = False) -> list[str]:
    """Markdown lines: how many seeds each method has per task where they differ, the medians, the goal check."""
    tasks = tasks or list(dict.fromkeys(t for t, _ in cells))
    methods = methods or sorted(dict.fromkeys(m for _, m in cells), key=lambda m: m != "hsmpi")
    lines = []
    for task in tasks:
        counts = Counter({m: len(cells.get((task, m), {})) for m in methods})
        if len(set(counts.values()) - {0}) > 1:
            seeds = ", ".join(f"{m} {n}" for m, n in counts.items() if n)
            lines.append(f"- {task}: the methods have different seeds ({seeds}); paired tests use the shared ones")
    return lines + [""] + tables.median_and_goal_sections(cells, tasks, methods, paired)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.compare", description=__doc__.split("\n")[0])
    p.add_argument("cells", nargs="+", help="cells.csv files (a run's, or those in docs/data)")
    p.add_argument("--tasks", nargs="+", help="only these tasks, in this order (default: all, as first read)")
    p.add_argument("--methods", nargs="+", help="only these methods, in this order (default: all, hsmpi first)")
    seeds_option(p)
    p.add_argument("--paired", action="store_true",
                   help="in the medians' brackets, the seeds where hsmpi is better / worse and the Wilcoxon p")
    args = p.parse_args(argv)
    cells = cells_or_say("benchmarks.quality.compare", args.cells, args.seeds)
    if cells is None:
        return 2
    if args.methods and "hsmpi" not in args.methods:
        print("benchmarks.quality.compare: --methods must include hsmpi, the method the others are compared with",
              file=sys.stderr)
        return 2
    print("\n".join(report(cells, args.tasks, args.methods, args.paired)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
