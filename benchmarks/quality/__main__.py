"""`mpirun -n 2 python -m benchmarks.quality [--quick] [--ablation [--variants ...]] [--sweep-m TASK]`: the
quality benchmark.

Runs every (task, seed, method) cell not stored yet in OUT/cells, then writes
OUT/results.md (tables), OUT/cells.csv (every cell the tables count) and OUT/*.png (curves, the
paper's Fig. 1b).  `--tasks` takes the built-in tasks' names and tasks of your own, written as for
`python -m hsmpi --task` (`path/to/file.py:Class` or `module:Class`): every method then runs on your task.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

from benchmarks.quality import ablation, tables
from benchmarks.quality.runner import (
    OWN_INIT,
    Cell,
    Method,
    baselines,
    check_available,
    code_fingerprint,
    run_cells,
    task_label,
)
from hsmpi.errors import UsageError, agreed
from hsmpi.parallel.comm import world
from hsmpi.tasks import BUILTIN, load_task

QUICK = {"population": 4, "epochs": 4, "sessions": 2, "seeds": 2}
FULL = {"population": 16, "epochs": 30, "sessions": 6, "seeds": 10}


class _Parser(argparse.ArgumentParser):
    """Prints help and usage errors on rank 0 only: under mpirun every rank parses the same command line."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if world().is_root:
            super()._print_message(message, file)


def parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out", help="folder for cells, tables and figures (default bench-out)")
    p.add_argument("--quick", action="store_true", help="a smoke run: S=4, M=4, m=2, 2 seeds")
    p.add_argument("--tasks", nargs="+", default=list(BUILTIN), metavar="TASK",
                   help=f"built-in tasks ({', '.join(BUILTIN)}; default all) or your own as path/to/file.py:Class "
                        "or module:Class")
    p.add_argument("--seeds", type=int, help="how many seeds (default 10, quick 2)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds FIRST..FIRST+N-1 (default 0; e.g. 10 to confirm on seeds no default was chosen on)")
    p.add_argument("-S", "--population", type=int, help="members / trials per method (default 16)")
    p.add_argument("-M", "--epochs", type=int, help="epochs per member / trial (default 30)")
    p.add_argument("-m", "--sessions", type=int, help="hsmpi's sessions (default 6)")
    p.add_argument("--methods", nargs="+", help="labels to run (default: all of the main table)")
    p.add_argument("--trial-init", choices=("shared", "independent"), default="shared",
                   help="the external tools' trials start from the seed's shared initial weights (default), or "
                        "each from its own (their labels then end in @own-init)")
    p.add_argument("--ablation", action="store_true", help="also run hsmpi's ablation variants")
    p.add_argument("--variants", nargs="+", choices=list(ablation.VARIANTS), metavar="VARIANT",
                   help="with --ablation: only these variants (default: all): " + ", ".join(ablation.VARIANTS))
    p.add_argument("--sweep-m", metavar="TASK", help="also sweep hsmpi's sessions m at fixed M on TASK")
    ns = p.parse_args(argv)
    base = QUICK if ns.quick else FULL
    for key in ("population", "epochs", "sessions", "seeds"):
        if getattr(ns, key) is None:
            setattr(ns, key, base[key])
        if getattr(ns, key) < 1:
            p.error(f"--{key} must be at least 1")
    if ns.first_seed < 0:
        p.error("--first-seed must be at least 0")
    if ns.sessions > ns.epochs:
        p.error(f"-m ({ns.sessions}) must not exceed -M ({ns.epochs})")
    if ns.variants and not ns.ablation:
        p.error("--variants needs --ablation")
    for spec in [*ns.tasks, *([ns.sweep_m] if ns.sweep_m is not None else [])]:
        if spec not in BUILTIN:
            try:  # on every rank alike: a file one node cannot see ends every rank, none waits in a collective
                agreed(world(), functools.partial(load_task, spec))
            except UsageError as err:
                p.error(str(err))
    known = {m.label.removesuffix(OWN_INIT) for m in baselines(ns.population)}
    unknown = [x for x in ns.methods or [] if x not in known]
    if unknown:
        p.error(f"--methods: unknown method(s) {unknown}; expected some of {sorted(known)}")
    labels = [task_label(t) for t in ns.tasks]
    if len(set(labels)) < len(labels):
        p.error(f"--tasks: two tasks would share a folder ({', '.join(sorted(labels))}); name each once")
    return ns


def plan(ns: argparse.Namespace) -> tuple[list[Cell], list[Method], list[Method], list[Method]]:
    """The cells to run and the method lists of the main, ablation and sweep tables."""
    main = baselines(ns.population, ns.trial_init)
    if ns.methods:  # checked by parse
        main = [m for m in main if m.label.removesuffix(OWN_INIT) in ns.methods]
    seeds = range(ns.first_seed, ns.first_seed + ns.seeds)
    cells = [Cell(t, s, m) for t in ns.tasks for s in seeds for m in main]
    abl = ablation.variants(ns.variants) if ns.ablation else []
    cells += [Cell(t, s, m) for t in ns.tasks for s in seeds for m in abl]
    sweep = ablation.sweep(ns.epochs) if ns.sweep_m else []
    cells += [Cell(ns.sweep_m, s, m) for s in seeds for m in sweep]
    return cells, main, abl, sweep


def report(ns: argparse.Namespace, main: list[Method], abl: list[Method], sweep: list[Method],
           seconds: float, ranks: int) -> str:
    """OUT/results.md and the figures, from every stored cell."""
    # This run's cells only: another budget's, or one made by other code, in the same folder is left out.
    same = (ns.population, ns.epochs, ns.sessions, code_fingerprint())
    cells = tables.load_cells(ns.out, lambda s: (s["population"], s["epochs"], s["sessions"], s.get("code")) == same)
    names = [m.label for m in main]
    lines = [f"# hsmpi quality benchmark: S={ns.population}, M={ns.epochs}, m={ns.sessions}, "
             f"seeds {ns.first_seed}-{ns.first_seed + ns.seeds - 1}", "",
             f"Command: `mpirun -n {ranks} python -m benchmarks.quality {' '.join(sys.argv[1:])}` "
             f"({seconds / 60:.1f} min for the cells run this time)", ""]
    lines += tables.median_and_goal_sections(cells, ns.tasks, names)
    for task in ns.tasks:
        lines += ["", f"## {task}", ""] + tables.task_table(cells, task, names + ["hsmpi#ensemble_test"])
    if abl:
        lines += ["", "## Ablation: hsmpi's options, one change at a time from the defaults", ""]
        labels = ["hsmpi"] + [m.label for m in abl]
        lines += tables.summary_rows(cells, ns.tasks, labels)
        for task in ns.tasks:
            lines += ["", f"### {task}", ""] + tables.task_table(cells, task, labels + ["hsmpi#ensemble_test"])
    if sweep:
        lines += ["", f"## Sessions m at M={ns.epochs} on {ns.sweep_m}", ""]
        lines += tables.task_table(cells, ns.sweep_m, ["hsmpi"] + [m.label for m in sweep])
    figures = [tables.curves(cells, ns.tasks, names, os.path.join(ns.out, "curves.png")),
               tables.figure_1b(cells, ns.first_seed, os.path.join(ns.out, "figure1b.png"))]
    lines += ["", "Figures: " + ", ".join(os.path.basename(f) for f in figures if f)]
    tables.write_csv(cells, os.path.join(ns.out, "cells.csv"))
    lines += ["", "Every cell of these tables: cells.csv (task, method, seed, test loss, seconds)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ns.out, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ns = parse(sys.argv[1:] if argv is None else argv)
    comm = world()
    cells, main_methods, abl, sweep = plan(ns)
    error = check_available(list({c.method.label: c.method for c in cells}.values()), comm.size)
    if error:
        if comm.is_root:
            print(f"benchmarks.quality: error: {error}", file=sys.stderr)
        return 2
    os.makedirs(ns.out, exist_ok=True)
    start = time.perf_counter()
    log: Any = print if comm.is_root else (lambda _: None)
    run_cells(cells, comm, ns.out, ns.population, ns.epochs, ns.sessions, log)
    if comm.is_root:
        print(report(ns, main_methods, abl, sweep, time.perf_counter() - start, comm.size))
    comm.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
