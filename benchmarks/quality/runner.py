"""Run the benchmark's cells over the ranks of one MPI job and keep each result as JSON.

A cell is (task, seed, method); hsmpi's own output of a cell (results.h5,
checkpoints, lineage) stays in `<out>/runs/<task>/<method>/seed<k>/`, ready
for `hsmpi plot`.  Sequential methods are spread over the ranks,
one cell per rank at a time; MPI methods (hsmpi, Propulate) run on all ranks
together, one cell after another.  Each finished cell is written at once to
`<out>/cells/<task>/<method>/seed<k>.json` (plain JSON), so a stopped
benchmark continues where it left off and never redoes a cell it has.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.quality import methods
from benchmarks.quality.trial import Problem
from hsmpi.io.files import replace_atomically
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import BUILTIN

Fn = Callable[[Problem, SerialComm, dict[str, Any]], methods.Outcome]


@dataclass(frozen=True)
class Method:
    """A labelled method: the function, its options and whether it is an MPI job."""

    label: str
    fn: Fn
    options: dict[str, Any] = field(default_factory=dict)
    parallel: bool = False
    needs: str = ""  # the module it imports (for a clear error when the extra is missing)


# hsmpi's algorithm settings, written out in every hsmpi cell: a stored cell made
# under other defaults is then never mistaken for one of the current defaults.
ALGORITHM = ("sampler", "radius", "radius_final", "explore", "candidates", "resample_probability", "select",
             "truncation_fraction", "elitism", "holdout", "independent_init", "batch_size", "returns", "average_top",
             "greedy_bags", "greedy_stop", "greedy_whole", "smooth", "islands", "migrate_every", "session_growth",
             "prune_at", "prune_fraction", "plateau", "tie_break")


def hsmpi_defaults(**changes: Any) -> dict[str, Any]:
    """hsmpi's current defaults for the algorithm's settings, with `changes` applied."""
    from hsmpi.config import Config

    defaults = Config().to_dict()
    return {**{k: defaults[k] for k in ALGORITHM}, **changes}


OWN_INIT = "@own-init"  # the label's suffix of a baseline whose trials each start from their own weights


def baselines(population: int, trial_init: str = "shared") -> list[Method]:
    """The methods of the main table, hsmpi's defaults first.  With `trial_init` "independent" the external
    tools' trials each start from their own initial weights, under labels ending in OWN_INIT (their cells
    never take the place of the shared-init ones)."""
    scaled = max(2, population // 4)
    suffix, init = (OWN_INIT, {"trial_init": "independent"}) if trial_init == "independent" else ("", {})
    return [
        Method("hsmpi", methods.hsmpi_method, hsmpi_defaults(), parallel=True),
        Method("hsmpi-pbt", methods.hsmpi_method, hsmpi_defaults(select="truncation", sampler="perturb"),
               parallel=True),
        Method("random" + suffix, methods.random_search, dict(init)),
        Method("hyperopt-tpe" + suffix, methods.hyperopt_tpe, dict(init), needs="hyperopt"),
        Method(f"hyperopt-tpe-s{scaled}" + suffix, methods.hyperopt_tpe, {"startup": scaled, **init},
               needs="hyperopt"),
        Method("optuna-tpe" + suffix, methods.optuna_tpe, dict(init), needs="optuna"),
        Method("optuna-hyperband" + suffix, methods.optuna_hyperband, dict(init), needs="optuna"),
        Method("propulate" + suffix, methods.propulate, dict(init), parallel=True, needs="propulate"),
    ]


@dataclass(frozen=True)
class Cell:
    task: str
    seed: int
    method: Method

    def path(self, out: str) -> str:
        return os.path.join(out, "cells", task_label(self.task), self.method.label, f"seed{self.seed}.json")


def task_label(spec: str) -> str:
    """A task's name in the benchmark's folders: a built-in task's own, `stem.Class` for `path/stem.py:Class`
    and `module.Class` for `module:Class` (no path separators, so one folder per task)."""
    if spec in BUILTIN:
        return spec
    where, _, name = spec.rpartition(":")
    stem = os.path.splitext(os.path.basename(where))[0] if where.endswith(".py") else where
    return f"{stem}.{name}"


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source that decides a cell's result: the hsmpi package and the benchmark's methods,
    trials and runner.  A stored cell is reused only under the same code: a cell from an edited checkout
    looks like a current one by its settings, and mixed into a table it changes a median unnoticed."""
    import hashlib

    import hsmpi

    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(os.path.abspath(hsmpi.__file__))
    files = sorted(os.path.relpath(os.path.join(d, f), package) for d, _, names in os.walk(package)
                   for f in names if f.endswith(".py"))
    digest = hashlib.sha256()
    for name, path in [(f, os.path.join(package, f)) for f in files] + \
            [(f, os.path.join(here, f)) for f in ("methods.py", "trial.py", "runner.py")]:
        with open(path, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


def settings_of(cell: Cell, population: int, epochs: int, sessions: int) -> dict[str, Any]:
    """What a stored cell must match to be reused (and to be counted in this run's tables)."""
    return {"task": cell.task, "seed": cell.seed, "method": cell.method.label, "options": cell.method.options,
            "population": population, "epochs": epochs, "sessions": sessions, "code": code_fingerprint()}


def load_cell(path: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """A stored cell made with the same settings, or None."""
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored if stored.get("settings") == settings else None


def check_available(chosen: list[Method], size: int) -> str | None:
    """Why the benchmark cannot run these methods here (a missing extra, too few ranks), or None."""
    import importlib.util

    missing = sorted({m.needs for m in chosen if m.needs and importlib.util.find_spec(m.needs) is None})
    if missing:
        return (f"the baselines need {', '.join(missing)}: pip install 'hsmpi[bench]' "
                f"(or leave those methods out with --methods)")
    if size < 2 and any(m.label == "propulate" for m in chosen):
        return "Propulate needs at least 2 MPI ranks (on one rank it waits forever on its own checkpoint message); " \
               "run under mpirun -n 2 or more, or leave it out with --methods"
    return None


def run_cells(cells: list[Cell], comm: SerialComm, out: str, population: int, epochs: int, sessions: int,
              log: Callable[[str], None]) -> None:
    """Every cell not stored yet: sequential ones spread over the ranks, then the MPI ones together."""
    torch.set_num_threads(1)
    todo = [c for c in cells if load_cell(c.path(out), settings_of(c, population, epochs, sessions)) is None]
    serial = [c for c in todo if not c.method.parallel]
    parallel = [c for c in todo if c.method.parallel]
    if comm.is_root:
        log(f"{len(cells) - len(todo)} of {len(cells)} cells stored; running {len(serial)} sequential "
            f"cells over {comm.size} rank(s), then {len(parallel)} MPI cells on all ranks")
    start = time.perf_counter()
    for cell in serial[comm.rank::comm.size]:
        _one(cell, comm, out, population, epochs, sessions, log, sequential=True)
    comm.barrier()
    for cell in parallel:
        _one(cell, comm, out, population, epochs, sessions, log, sequential=False)
    if comm.is_root:
        log(f"cells done in {time.perf_counter() - start:.0f} s")


def _one(cell: Cell, comm: SerialComm, out: str, population: int, epochs: int, sessions: int,
         log: Callable[[str], None], sequential: bool) -> None:
    problem = Problem(cell.task, cell.seed, population, epochs, sessions,
                      independent_init=cell.method.options.get("trial_init") == "independent",
                      workdir=os.path.join(out, "runs", task_label(cell.task), cell.method.label, f"seed{cell.seed}"))
    outcome = cell.method.fn(problem, SerialComm() if sequential else comm, dict(cell.method.options))
    if sequential or comm.is_root:
        record = {"settings": settings_of(cell, population, epochs, sessions), **outcome.to_dict()}
        path = cell.path(out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, record)
        test = f"{outcome.test:.4g}" if math.isfinite(outcome.test) else str(outcome.test)
        stream = sys.stdout if comm.is_root else sys.stderr
        print(f"[rank {comm.rank}] {cell.task} seed {cell.seed} {cell.method.label}: test {test} "
              f"({outcome.epochs} epochs, {outcome.seconds:.1f} s)", file=stream, flush=True)


def write_json(path: str, record: dict[str, Any]) -> None:
    """Write a cell atomically: a killed run leaves no half cell."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f)
    replace_atomically(path, write, ".json")
