"""The methods compared, each as `method(problem, comm, options) -> Outcome`.

Sequential baselines (random search, Hyperopt, Optuna) run their S trials one
after another in one process, as those libraries do by default.  hsmpi and
Propulate are MPI jobs and run on every rank of `comm` together.  Every method
spends at most S x M epochs and hands back the model it would choose: the
trial (or member) with the lowest validation loss.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from benchmarks.quality.trial import Problem, TrialResult, train_trial
from hsmpi.algorithm.space import Choice, HParams, IntUniform, LogUniform, Param, Uniform, sample_space
from hsmpi.algorithm.streams import derive_seed
from hsmpi.parallel.comm import SerialComm, mpi_handle

BASELINE_STREAM = 11  # derive_seed key for the baselines' own random streams


@dataclass
class Outcome:
    """One method's run on one task and seed: what the tables and plots need."""

    test: float  # test loss of the model the method chose
    val: float  # that model's validation loss
    hp: HParams
    epochs: int  # epochs spent, all trials together
    seconds: float  # wall-clock of the whole method, loading the task's data included
    ranks: int  # processes it ran on
    curve: list[list[float]]  # [cumulative epochs, best validation loss so far]
    extra: dict[str, Any] = field(default_factory=dict)
    prediction: list[float] | None = None  # chosen model's test outputs (1-D tasks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """The trials of a sequential method, in order: budget, curve and the choice."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.trials: list[TrialResult] = []
        self.curve: list[list[float]] = []
        self.spent = 0
        self.best = math.inf
        self.start = time.perf_counter()

    def epoch(self, val: float) -> None:
        """Count one epoch trained and its validation loss."""
        self.spent += 1
        self.best = min(self.best, val if math.isfinite(val) else math.inf)
        self.curve.append([float(self.spent), self.best])

    def run(self, hp: HParams, epochs: int | None = None, prune: Callable[[int, float], bool] | None = None
            ) -> TrialResult:
        """Train the next trial (index = trials so far), counting each epoch."""
        def report(epoch: int, val: float) -> bool:
            self.epoch(val)
            return prune(epoch, val) if prune is not None else False
        keep = _one_d(self.problem)
        trial = train_trial(self.problem, len(self.trials), hp, epochs or self.problem.epochs, report, keep)
        self.trials.append(trial)
        return trial

    def outcome(self, complete_only: bool = False, **extra: Any) -> Outcome:
        """The chosen trial: lowest final validation loss (of full-length trials when `complete_only`)."""
        pool = [t for t in self.trials if len(t.val) == self.problem.epochs] if complete_only else self.trials
        chosen = min(pool or self.trials, key=lambda t: (t.final_val, t.index))
        seconds = time.perf_counter() - self.start + self.problem.load_seconds
        return Outcome(chosen.test, chosen.final_val, chosen.hp, self.spent, seconds, 1,
                       self.curve, {"trials": len(self.trials), **extra}, chosen.prediction)


def _one_d(problem: Problem) -> bool:
    return problem.task_name == "regression1d"


def _clip(param: Param, value: float) -> Any:
    """A library's draw, forced onto the space's bounds and types (exp(log(low)) can fall just below low)."""
    if isinstance(param, Choice):
        raise TypeError("choices are never clipped")
    if isinstance(param, IntUniform):
        return int(min(max(int(round(value)), param.low), param.high))
    return float(min(max(float(value), param.low), param.high))


def _rng(problem: Problem, key: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(problem.seed, BASELINE_STREAM, key))


# ---------------------------------------------------------------- random search

def random_search(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """S trials with hyperparameters drawn uniformly (log-uniformly where log-scaled) from the space."""
    ledger, rng = Ledger(problem), _rng(problem, 1)
    for _ in range(problem.population):
        ledger.run(sample_space(problem.task.space, rng))
    return ledger.outcome()


# ---------------------------------------------------------------- Hyperopt

def hyperopt_space(space: dict[str, Param]) -> dict[str, Any]:
    from hyperopt import hp

    out: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, LogUniform):
            out[name] = hp.loguniform(name, math.log(p.low), math.log(p.high))
        elif isinstance(p, IntUniform):
            out[name] = hp.uniformint(name, p.low, p.high)
        elif isinstance(p, Uniform):
            out[name] = hp.uniform(name, p.low, p.high)
        elif isinstance(p, Choice):
            out[name] = hp.choice(name, list(p.values))
        else:
            raise TypeError(f"{name}: no Hyperopt form for {p!r}")
    return out


def hyperopt_tpe(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """Hyperopt's TPE with S trials.  `startup`: its n_startup_jobs (None: Hyperopt's default, 20)."""
    import functools
    import logging

    from hyperopt import STATUS_OK, Trials, fmin, tpe

    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    space, ledger = problem.task.space, Ledger(problem)
    startup = options.get("startup")

    def objective(drawn: dict[str, Any]) -> dict[str, Any]:
        hp = {n: drawn[n] if isinstance(p, Choice) else _clip(p, drawn[n]) for n, p in space.items()}
        return {"loss": ledger.run(hp).final_val, "status": STATUS_OK}

    algo = tpe.suggest if startup is None else functools.partial(tpe.suggest, n_startup_jobs=startup)
    fmin(objective, hyperopt_space(space), algo=algo, max_evals=problem.population, trials=Trials(),
         rstate=_rng(problem, 2), show_progressbar=False)
    used = 20 if startup is None else startup
    return ledger.outcome(startup_trials=used, random_only=used >= problem.population)


# ---------------------------------------------------------------- Optuna

def _suggest(trial: Any, space: dict[str, Param]) -> HParams:
    hp: HParams = {}
    for name, p in space.items():
        if isinstance(p, LogUniform):
            hp[name] = _clip(p, trial.suggest_float(name, p.low, p.high, log=True))
        elif isinstance(p, IntUniform):
            hp[name] = trial.suggest_int(name, p.low, p.high)
        elif isinstance(p, Uniform):
            hp[name] = _clip(p, trial.suggest_float(name, p.low, p.high))
        elif isinstance(p, Choice):
            hp[name] = trial.suggest_categorical(name, list(p.values))
    return hp


def optuna_tpe(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """Optuna's TPE sampler (its defaults: 10 random start-up trials) with S trials of M epochs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ledger = Ledger(problem)
    sampler = optuna.samplers.TPESampler(seed=derive_seed(problem.seed, BASELINE_STREAM, 3) % 2**31)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: ledger.run(_suggest(t, problem.task.space)).final_val, n_trials=problem.population)
    return ledger.outcome()


def optuna_hyperband(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """Optuna's TPE with a Hyperband pruner fed every epoch, until S x M epochs are spent."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ledger = Ledger(problem)
    sampler = optuna.samplers.TPESampler(seed=derive_seed(problem.seed, BASELINE_STREAM, 4) % 2**31)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=problem.epochs)
    # Hyperband puts trial n in a bracket by a hash of f"{study name}_{n}"; optuna's default name holds a
    # random UUID, which made the trial count (and the benchmark's result) change from one run to the next.
    study = optuna.create_study(sampler=sampler, pruner=pruner,
                                study_name=f"hsmpi-bench-{problem.task_name}-seed{problem.seed}")

    def objective(trial: Any) -> float:
        hp = _suggest(trial, problem.task.space)
        pruned = False

        def prune(epoch: int, val: float) -> bool:
            nonlocal pruned
            trial.report(val, epoch)
            pruned = trial.should_prune()
            return pruned or ledger.spent >= problem.budget
        result = ledger.run(hp, prune=prune)
        if pruned:
            raise optuna.TrialPruned()
        return result.final_val

    while ledger.spent < problem.budget:
        study.optimize(objective, n_trials=1)
    return ledger.outcome(complete_only=True)


# ---------------------------------------------------------------- Propulate

def propulate(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """Propulate's default evolutionary propagator, S evaluations of M epochs over the ranks of `comm`.

    Log-scaled parameters are searched as log10 values; each candidate trains
    from scratch.  Propulate keeps its own (pickle) checkpoints in a temporary
    folder that is removed afterwards; nothing of it is read back by hsmpi.
    """
    import logging

    import propulate as pp

    logging.getLogger("propulate").setLevel(logging.WARNING)
    space, ledger = problem.task.space, Ledger(problem)
    limits: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, LogUniform):
            limits[name] = (math.log10(p.low), math.log10(p.high))
        elif isinstance(p, IntUniform):
            limits[name] = (int(p.low), int(p.high))
        elif isinstance(p, Uniform):
            limits[name] = (float(p.low), float(p.high))
        elif isinstance(p, Choice):
            limits[name] = tuple(str(v) for v in p.values)

    def decode(ind: Any) -> HParams:
        hp: HParams = {}
        for name, p in space.items():
            if isinstance(p, LogUniform):
                hp[name] = _clip(p, 10.0 ** float(ind[name]))
            elif isinstance(p, Choice):
                hp[name] = next(v for v in p.values if str(v) == ind[name])
            else:
                hp[name] = _clip(p, float(ind[name]))
        return hp

    def loss(ind: Any) -> float:
        result = ledger.run(decode(ind))
        return result.final_val if math.isfinite(result.final_val) else 1e30

    raw = mpi_handle(comm)
    rng = random.Random(derive_seed(problem.seed, BASELINE_STREAM, 5, comm.rank))
    generations = math.ceil(problem.population / comm.size)
    propagator = pp.get_default_propagator(pop_size=2 * comm.size, limits=limits, rng=rng)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="propulate-") as tmp:
        where = comm.bcast(tmp if comm.is_root else None)
        os.makedirs(where, exist_ok=True)
        runner = pp.Propulator(loss_fn=loss, propagator=propagator, rng=rng, island_comm=raw, propulate_comm=raw,
                               generations=generations, checkpoint_path=where)
        runner.propulate(logging_interval=10**9)
        comm.barrier()
    return _merge(comm, ledger, problem, time.perf_counter() - start + problem.load_seconds)


def _merge(comm: SerialComm, ledger: Ledger, problem: Problem, seconds: float) -> Outcome:
    """Trials run on every rank, chosen and counted on rank 0 (the curve in finishing order)."""
    parts = comm.gather([(t, ledger.start + sum(x.seconds for x in ledger.trials[:i + 1]))
                         for i, t in enumerate(ledger.trials)])
    if parts is None:
        return Outcome(math.nan, math.nan, {}, 0, seconds, comm.size, [])
    done = sorted((x for part in parts for x in part), key=lambda x: x[1])
    merged = Ledger(problem)
    for trial, _ in done:
        for v in trial.val:
            merged.epoch(v)
        merged.trials.append(trial)
    out = merged.outcome()
    out.seconds, out.ranks = seconds, comm.size
    return out


# ---------------------------------------------------------------- hsmpi

def hsmpi_method(problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    """hsmpi itself, through its Python API, on every rank of `comm`; `options` are hsmpi's settings.

    It selects on the validation loss, as every baseline's trials do (the tables judge the test loss), unless
    `options` name an objective (None: the task's own)."""
    if problem.workdir:
        return _hsmpi_in(problem.workdir, problem, comm, options)
    # No folder given: the run's files go to a temporary one, removed once its numbers are read, so that
    # calls from a script do not fill the temporary directory (the outcome then names no results file). A
    # run that raised leaves its folder, and no rank waits for the others to remove it.
    out = comm.bcast(tempfile.mkdtemp(prefix="hsmpi-bench-") if comm.is_root else None)
    outcome = _hsmpi_in(out, problem, comm, options)
    comm.barrier()
    if comm.is_root:
        shutil.rmtree(out, ignore_errors=True)
    outcome.extra.pop("results", None)
    return outcome


def _hsmpi_in(out: str, problem: Problem, comm: SerialComm, options: dict[str, Any]) -> Outcome:
    from hsmpi.engine.job import run

    settings = {"population": problem.population, "epochs": problem.epochs, "sessions": problem.sessions,
                "seed": problem.seed, "out": out, "export_top": 0, "threads": 1, "objective": "loss", **options}
    start = time.perf_counter()
    result = run(problem.task_name, comm=comm, log=None, **settings)
    seconds = time.perf_counter() - start
    if not comm.is_root:
        return Outcome(math.nan, math.nan, {}, 0, seconds, comm.size, [])
    val = np.asarray(result.history["val_loss"], dtype=float)  # (sessions, S)
    epochs = np.cumsum(np.asarray(result.history["epochs"])) * problem.population
    best = np.minimum.accumulate(np.where(np.isfinite(val), val, np.inf).min(axis=1))
    prediction = None
    if _one_d(problem):
        with torch.no_grad():
            x = problem.data["test"].tensors[0]  # type: ignore[index]
            prediction = result.returned_model().cpu().eval()(x).reshape(-1).tolist()
    return Outcome(result.test_loss, result.best_val_loss, result.best_hparams, int(epochs[-1]), seconds, comm.size,
                   [[float(e), float(b)] for e, b in zip(epochs, best)],
                   {"ensemble_test": result.ensemble_test_loss, "member_test": result.member_test_loss,
                    "returned": result.returned, "best_session": result.best_session,
                    "results": os.path.join(out, "results.h5")}, prediction)
