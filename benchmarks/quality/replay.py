"""Return rules replayed on stored final populations: a rule tried on 80 seeds in minutes, not a benchmark run.

What a run returns is chosen from its final population's outputs on the validation split alone, so a rule for
choosing it can be tried without training again:

- `collect` runs hsmpi as the benchmark runs it (the defaults, one cell at a time in this process: its results
  do not depend on the number of ranks) and keeps each final member's outputs on the validation and test
  splits, mapped by the task's `ensemble_in` as `--returns` combines them, with the targets, the last
  session's scores and the run's own cell, in `<dir>/<task>/S<S>-M<M>-m<m>/seed<k>.h5` (arrays and plain
  attributes). Under mpirun the cells are spread over the ranks; a file already there is kept.
- `rules` replays return rules on those files and writes their cells in the benchmark's `cells.csv` format.
  A rule named as an ablation variant (`one-selection`, `bags-20`, `bags-20-oob`, `blend-oob`, `average`) gives
  that variant's cells, and `defaults` gives hsmpi's (labelled `hsmpi`; hsmpi-pbt's for its collected runs), to
  the bit: `benchmarks.quality.compare` refuses two files that disagree on a cell, so reading the replay beside
  a stored run checks that, and pairs the new rules with every stored method. `--beside` writes stored cells
  of the tasks and methods the replay does not write into the same file.

Only tasks whose validation split has `AUTO_FEW_SAMPLES` (128) samples or more: where the defaults return
the greedy ensemble.

    mpirun -n 2 python -m benchmarks.quality.replay collect --dir replay32 -S 32 -M 60 --seeds 40 \\
        --tasks digits moons-schedule
    python -m benchmarks.quality.replay rules --dir replay32 --rules defaults bags-20 blend --csv replay32.csv
    python -m benchmarks.quality.compare --paired replay32.csv docs/data/greedy-bags-32x60-seeds-0-79-2026-12-07.csv
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import torch

from benchmarks.quality import compare, methods, tables
from benchmarks.quality.runner import hsmpi_defaults
from benchmarks.quality.trial import Problem
from hsmpi.config import Config
from hsmpi.engine.average import AUTO_FEW_SAMPLES, FOLDS, _evaluated, _greedy, _judged_score
from hsmpi.io.files import replace_atomically
from hsmpi.parallel.comm import SerialComm, world
from hsmpi.tasks import BUILTIN, Objective, load_task, task_loss

SPLITS = ("val", "test")


@dataclass
class Population:
    """One collected cell: every final member's mapped outputs on each split, and what the run returned."""

    task_name: str
    seed: int
    method: str  # the method that trained it: a key of COLLECTED
    outputs: dict[str, np.ndarray]  # split -> (S, *output shape), float64, mapped by the task's ensemble_in
    targets: dict[str, torch.Tensor]
    last_scores: np.ndarray  # (S,): the last session's scores, as its selection compared them
    returned: float  # the run's test loss: the benchmark's cell
    seconds: float  # the run's wall-clock
    # the ensembles selected so far, by settings and rows: several rules start from the same one
    selected: dict[tuple[Any, ...], tuple[dict[int, int], float]] = field(default_factory=dict)


def cell_path(folder: str, task_name: str, population: int, epochs: int, sessions: int, seed: int,
              method: str = "hsmpi") -> str:
    name = f"seed{seed}.h5" if method == "hsmpi" else f"{method}-seed{seed}.h5"
    return os.path.join(folder, task_name, f"S{population}-M{epochs}-m{sessions}", name)


COLLECTED = {"hsmpi": {}, "hsmpi-pbt": {"select": "truncation", "sampler": "perturb"}}  # as runner.baselines


def collect_one(task_name: str, seed: int, population: int, epochs: int, sessions: int, path: str,
                method: str = "hsmpi") -> None:
    """Run `method` (hsmpi's defaults, or hsmpi-pbt's) on one cell, as the benchmark does, and write its final
    population to `path`."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    workdir = os.path.join(folder, f".run-seed{seed}")
    problem = Problem(task_name, seed, population, epochs, sessions, workdir=workdir)
    outcome = methods.hsmpi_method(problem, SerialComm(), hsmpi_defaults(**COLLECTED[method]))
    task = problem.task
    into = getattr(task, "ensemble_in", lambda out: out)
    outputs: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    with h5py.File(outcome.extra["results"], "r") as f:
        last_scores = np.asarray(f["history/val_loss"][-1], dtype=float)  # the objective is the loss
        weights = f["population/weights"]
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # building a model draws its initial weights
            for i in range(population):
                model = task.model()
                model.load_state_dict({n: torch.from_numpy(np.asarray(weights[n][i])) for n in weights})
                model.eval()
                for s in SPLITS:  # as a member predicts (Member.predict), in the same batches
                    out = torch.cat([model(x) for x, _ in problem.data[s].in_order()])
                    outputs[s].append(into(out).double().cpu().numpy())

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for s in SPLITS:
                f[f"{s}/outputs"] = np.stack(outputs[s])
                f[f"{s}/targets"] = torch.cat([y for _, y in problem.data[s].in_order()]).numpy()
            f["last_scores"] = last_scores
            f.attrs.update({"method": method, "task": task_name, "seed": seed, "population": population,
                            "epochs": epochs, "sessions": sessions, "returned": outcome.test,
                            "seconds": outcome.seconds})

    replace_atomically(path, write, suffix=".h5")
    shutil.rmtree(workdir, ignore_errors=True)


def load(path: str) -> Population:
    with h5py.File(path, "r") as f:
        a = f.attrs
        return Population(str(a["task"]), int(a["seed"]), str(a.get("method", "hsmpi")),
                          {s: np.asarray(f[f"{s}/outputs"][()]) for s in SPLITS},
                          {s: torch.from_numpy(np.asarray(f[f"{s}/targets"][()])) for s in SPLITS},
                          np.asarray(f["last_scores"][()]), float(a["returned"]), float(a["seconds"]))


# ---- the rules ----

def _candidates(pop: Population) -> list[int]:
    """The members `--returns` combines: a finite last score, and finite outputs on both splits."""
    return [i for i in range(len(pop.last_scores)) if math.isfinite(pop.last_scores[i])
            and all(np.isfinite(pop.outputs[s][i]).all() for s in SPLITS)]


def _ensemble(pop: Population, options: dict[str, Any] | None = None, fit: np.ndarray | None = None,
              held: np.ndarray | None = None) -> tuple[dict[int, int], float]:
    """hsmpi's own greedy selection (`hsmpi.engine.average`; `options`: the settings changed from the defaults,
    such as `greedy_bags`) on the validation rows `fit` (None: all), scored on the validation rows `held`
    (None: on the test split): each member's picks, and that score."""
    key = (tuple(sorted((options or {}).items())), None if fit is None else fit.tobytes(),
           None if held is None else held.tobytes())
    if key not in pop.selected:
        pop.selected[key] = _selected(pop, options, fit, held)
    return pop.selected[key]


def _selected(pop: Population, options: dict[str, Any] | None, fit: np.ndarray | None,
              held: np.ndarray | None) -> tuple[dict[int, int], float]:
    task = load_task(pop.task_name)
    config = Config(seed=pop.seed, **(options or {}))
    val, target = pop.outputs["val"], pop.targets["val"]
    split_in = (val, target) if fit is None else (val[:, fit], target[fit])
    split_out = (pop.outputs["test"], pop.targets["test"]) if held is None else (val[:, held], target[held])
    candidates = _candidates(pop)
    mapped = {i: [torch.from_numpy(split_in[0][i]), torch.from_numpy(split_out[0][i])] for i in candidates}
    shapes = [tuple(split_in[0].shape[1:]), tuple(split_out[0].shape[1:])]
    ensemble = _greedy(SerialComm(), task, Objective(), config, mapped, shapes, [split_in[1], split_out[1]],
                       candidates)
    if ensemble is None:
        return {}, math.inf
    return dict(zip(ensemble.members, ensemble.counts)), ensemble.test["loss"]


def _averaged(pop: Population, weights: dict[int, float], split: str) -> np.ndarray:
    """The members' mapped outputs on `split` averaged with `weights` (float64, summed in member order)."""
    total = np.zeros(pop.outputs[split].shape[1:])
    for i in sorted(weights):
        total += weights[i] * pop.outputs[split][i]
    return total / sum(weights.values())


def _weighted(pop: Population, weights: dict[int, float], split: str = "test") -> float:
    """The loss on `split` of the members' mapped outputs averaged with `weights`."""
    mean = torch.from_numpy(_averaged(pop, weights, split))
    _, test = _evaluated(load_task(pop.task_name), [mean, mean], [pop.targets[split], pop.targets[split]])
    return test["loss"]


def _blend(*picks: dict[int, int], share: float = 0.5) -> dict[int, float]:
    """Two ensembles' weighted sum, each one's picks normalised to sum to one: the first weighs 1 - `share`,
    the second `share`."""
    weights: dict[int, float] = {}
    for counts, part in zip(picks, (1 - share, share)):
        total = sum(counts.values())
        for i, c in counts.items():
            weights[i] = weights.get(i, 0.0) + part * c / total
    return {i: w for i, w in weights.items() if w > 0}


SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _folds(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation split's FOLDS folds, each as (the other rows, its rows), as `--returns auto` folds it."""
    every = np.arange(size)
    return [(np.setdiff1d(every, fold), fold) for fold in (every[f::FOLDS] for f in range(FOLDS))]


def _cv_share(pop: Population, options: dict[str, Any]) -> float:
    """The average's share in a blend of the greedy ensemble (`options`) with the plain average, chosen by
    5-fold cross-validation: on each fold, the ensemble selected on the other four, blended with the average
    at each share of SHARES, scored on it; the share with the lowest summed score (ties: the smaller), then
    the blend of the ensemble selected on the whole split at that share; its test loss."""
    task = load_task(pop.task_name)
    everyone = {i: 1 for i in _candidates(pop)}
    totals = np.zeros(len(SHARES))
    for rest, fold in _folds(len(pop.targets["val"])):
        counts, _ = _ensemble(pop, options, rest, fold)
        for k, share in enumerate(SHARES):
            totals[k] += _fold_loss(pop, task, _blend(counts, everyone, share=share), fold) * len(fold)
    share = SHARES[int(np.argmin(totals))]
    return _weighted(pop, _blend(_ensemble(pop, options)[0], everyone, share=share))


def _best(pop: Population, part: int) -> list[int]:
    """The best 1/`part` of the candidates by their last score (at least one)."""
    ranked = sorted(_candidates(pop), key=lambda i: (pop.last_scores[i], i))
    return ranked[:max(1, len(ranked) // part)]


def _unit(counts: dict[int, int]) -> dict[int, float]:
    return {i: float(c) for i, c in counts.items()}


# The greedy ensemble's settings, each written out in full (the defaults changed on 2026-12-07 from ONE to BLEND_OOB)
ONE: dict[str, Any] = {"greedy_bags": 1}  # one selection on the whole split
BAGS: dict[str, Any] = {"greedy_bags": 20, "greedy_stop": "in-bag", "greedy_whole": False}
OOB: dict[str, Any] = {"greedy_bags": 20, "greedy_stop": "out-of-bag", "greedy_whole": False}
BLEND_OOB: dict[str, Any] = {**OOB, "greedy_whole": True}  # half one selection, half the out-of-bag bags


def _cv_choice(pop: Population, options: list[dict[str, Any]]) -> float:
    """Of ensemble selections with `options`, the one whose selection, made on 4 of 5 folds of the validation
    split, scores best on the fifth (summed over the folds, weighted by size); its test loss."""
    folds = _folds(len(pop.targets["val"]))
    task = load_task(pop.task_name)
    scores = []
    for option in options:
        total = 0.0
        for rest, fold in folds:
            total += _fold_loss(pop, task, _unit(_ensemble(pop, option, rest, fold)[0]), fold) * len(fold)
        scores.append(total)
    best = options[int(np.argmin(scores))]
    return _ensemble(pop, best)[1]


def _fold_loss(pop: Population, task: Any, weights: dict[int, float], fold: np.ndarray) -> float:
    """The score on the validation rows `fold` of the members' outputs averaged with `weights`."""
    mean = torch.from_numpy(_averaged(pop, weights, "val")[fold])
    target = pop.targets["val"][fold]
    judged, _ = _evaluated(task, [mean, mean], [target, target])
    return _judged_score(Objective(), judged)


def _mean(pop: Population, weights: dict[int, float], split: str) -> torch.Tensor:
    """The members' mapped outputs on `split` averaged with `weights`, mapped back (float32, as `_evaluated`)."""
    back = getattr(load_task(pop.task_name), "ensemble_out", lambda mean: mean)
    return back(torch.from_numpy(_averaged(pop, weights, split)).float())


TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(4.0), 97))


def _calibrated(pop: Population, weights: dict[int, float], affine: bool) -> float:
    """The ensemble's test loss after a calibration fitted on the validation split: for class labels, one
    temperature dividing its log-probabilities (the grid's best on validation); for a regression with
    `affine`, a * output + b by least squares on validation (without, left as it is)."""
    task = load_task(pop.task_name)
    val, test = _mean(pop, weights, "val"), _mean(pop, weights, "test")
    target = pop.targets["val"]
    if not (target.is_floating_point() or target.is_complex()):
        with torch.no_grad():
            losses = [float(task_loss(task, val / float(t), target)) for t in TEMPERATURES]
            return float(task_loss(task, test / float(TEMPERATURES[int(np.argmin(losses))]), pop.targets["test"]))
    if not affine:
        return float(task_loss(task, test, pop.targets["test"]))
    x, y = val.double().reshape(-1).numpy(), target.double().reshape(-1).numpy()
    a, b = np.polyfit(x, y, 1)
    with torch.no_grad():
        return float(task_loss(task, (a * test.double() + b).float(), pop.targets["test"]))


Rule = Callable[[Population], float]
# name -> (the method label its cells carry, the rule). A label that names an ablation variant must give that
# variant's cells to the bit.
RULES: dict[str, tuple[str, Rule]] = {
    "defaults": ("hsmpi", lambda p: _ensemble(p)[1]),
    "one-selection": ("hsmpi/one-selection", lambda p: _ensemble(p, ONE)[1]),
    "bags-20": ("hsmpi/bags-20", lambda p: _ensemble(p, BAGS)[1]),
    "bags-20-oob": ("hsmpi/bags-20-oob", lambda p: _ensemble(p, OOB)[1]),
    "average": ("hsmpi/average", lambda p: _weighted(p, {i: 1.0 for i in _candidates(p)})),
    "blend": ("hsmpi/blend", lambda p: _weighted(p, _blend(_ensemble(p, ONE)[0], _ensemble(p, BAGS)[0]))),
    "blend-oob": ("hsmpi/blend-oob", lambda p: _ensemble(p, BLEND_OOB)[1]),
    "top-quarter": ("hsmpi/top-quarter", lambda p: _weighted(p, _unit({i: 1 for i in _best(p, 4)}))),
    "blend-average": ("hsmpi/blend-average",
                      lambda p: _weighted(p, _blend(_ensemble(p, ONE)[0], {i: 1 for i in _candidates(p)}))),
    "blend-oob-average": ("hsmpi/blend-oob-average",
                          lambda p: _weighted(p, _blend(_ensemble(p, OOB)[0], {i: 1 for i in _candidates(p)}))),
    "cv-share": ("hsmpi/cv-share", lambda p: _cv_share(p, ONE)),
    "cv-oob": ("hsmpi/cv-oob", lambda p: _cv_choice(p, [ONE, OOB])),
    "temperature": ("hsmpi/temperature", lambda p: _calibrated(p, _unit(_ensemble(p, ONE)[0]), affine=False)),
    "calibrated": ("hsmpi/calibrated", lambda p: _calibrated(p, _unit(_ensemble(p, ONE)[0]), affine=True)),
}


# ---- the command line ----

def _collect(ns: argparse.Namespace) -> int:
    comm = world()
    cells = [(t, s) for t in ns.tasks for s in range(ns.first_seed, ns.first_seed + ns.seeds)]
    for task_name, seed in cells[comm.rank::comm.size]:
        path = cell_path(ns.dir, task_name, ns.population, ns.epochs, ns.sessions, seed, ns.method)
        if os.path.exists(path):
            continue
        start = time.perf_counter()
        collect_one(task_name, seed, ns.population, ns.epochs, ns.sessions, path, ns.method)
        seconds = time.perf_counter() - start
        print(f"rank {comm.rank}: {ns.method} {task_name} seed {seed} in {seconds:.0f} s", flush=True)
    comm.barrier()
    return 0


def _replayed(path: str, names: list[str], tasks: list[str] | None,
              seeds: tuple[int, int]) -> tuple[str, int, float, dict[str, float]] | None:
    """One collected cell's rules: (task, seed, the run's seconds, label -> test loss); None: a split too
    small for the greedy ensemble, or a task or seed not asked for."""
    torch.set_num_threads(1)  # small tensors: one thread is many times faster than several contending
    with h5py.File(path, "r") as f:  # its task and seed first: a file not asked for is not read
        task_name, seed = str(f.attrs["task"]), int(f.attrs["seed"])
    if (tasks and task_name not in tasks) or not seeds[0] <= seed <= seeds[1]:
        return None
    pop = load(path)
    if len(pop.targets["val"]) < AUTO_FEW_SAMPLES:
        return None
    # a rule's label names hsmpi; another collected method's cells carry its own name in its place
    return pop.task_name, pop.seed, pop.seconds, {pop.method + RULES[n][0][len("hsmpi"):]: RULES[n][1](pop)
                                                  for n in names}


def _rules(ns: argparse.Namespace) -> int:
    paths = sorted(glob.glob(os.path.join(ns.dir, "*", f"S{ns.population}-M{ns.epochs}-m{ns.sessions}",
                                          "*seed*.h5")))
    if not paths:
        print(f"benchmarks.quality.replay: error: no collected cells for S={ns.population}, M={ns.epochs}, "
              f"m={ns.sessions} under {ns.dir}", file=sys.stderr)
        return 2
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    with ProcessPoolExecutor(ns.jobs) as pool:
        for done in pool.map(_replayed, paths, [ns.rules] * len(paths), [ns.tasks] * len(paths),
                              [ns.seeds] * len(paths)):
            if done is not None:
                task_name, seed, seconds, losses = done
                for label, loss in losses.items():
                    cells.setdefault((task_name, label), {})[seed] = {"test": loss, "seconds": seconds}
    replayed = len(cells)
    if ns.beside:  # the stored cells of every task and method the replay did not write, in the same file
        stored = compare.cells_or_say("benchmarks.quality.replay", ns.beside, range(ns.seeds[0], ns.seeds[1] + 1))
        if stored is None:
            return 2
        cells.update({key: by_seed for key, by_seed in stored.items() if key not in cells
                      and (not ns.tasks or key[0] in ns.tasks)})
    rows = tables.write_csv(cells, ns.csv)
    kept = f", beside {len(cells) - replayed} stored tasks and methods" if ns.beside else ""
    print(f"{rows} cells from {len(paths)} collected runs{kept} in {ns.csv}")
    return 0


def _seed_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed range A-B: {text!r}") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"the range {text!r} is empty")
    return low, high


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.replay", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("collect", "rules"):
        q = sub.add_parser(name)
        q.add_argument("--dir", required=True, help="the collected cells' folder")
        q.add_argument("-S", "--population", type=int, default=16, help="members S (default 16)")
        q.add_argument("-M", "--epochs", type=int, default=30, help="epochs M (default 30)")
        q.add_argument("-m", "--sessions", type=int, default=6, help="sessions m (default 6)")
        if name == "collect":
            q.add_argument("--tasks", nargs="+", required=True, choices=sorted(BUILTIN))
            q.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
            q.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (default 0)")
            q.add_argument("--method", default="hsmpi", choices=list(COLLECTED),
                           help="the method whose final populations are kept (default hsmpi)")
        else:
            q.add_argument("--rules", nargs="+", default=["defaults"], choices=list(RULES))
            q.add_argument("--csv", required=True, help="write the replayed cells here (cells.csv's format)")
            q.add_argument("--tasks", nargs="+", help="only these tasks (default: every one collected)")
            q.add_argument("--seeds", type=_seed_range, default=(0, sys.maxsize), metavar="A-B",
                           help="only seeds A to B, both included (default: every one collected)")
            q.add_argument("--beside", nargs="+", metavar="CELLS",
                           help="cells.csv files whose cells go into --csv too, for every task and method the "
                                "replay does not write (a default changed: its cells take the stored ones' place)")
            q.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                           help="processes replaying cells at once (default: one per core)")
    ns = p.parse_args(argv)
    if ns.population < 2 or ns.epochs < 1 or not 1 <= ns.sessions <= ns.epochs:
        p.error("need -S 2 or more, -M 1 or more and 1 <= -m <= -M")
    if ns.command == "collect" and ns.seeds < 1:
        p.error("need --seeds 1 or more")
    if ns.command == "rules" and ns.jobs < 1:
        p.error("need --jobs 1 or more")
    return _collect(ns) if ns.command == "collect" else _rules(ns)


if __name__ == "__main__":
    sys.exit(main())
