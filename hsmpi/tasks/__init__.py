"""Tasks: what to train (model, data, hyperparameter space, optimizer).

A task is a class instantiated with no arguments that has
- `space`: dict name -> hsmpi.Uniform / LogUniform / IntUniform / Choice;
- `data(seed)` -> (train, val, test) torch Datasets;
- `model()` -> torch.nn.Module (hsmpi seeds torch before the call);
- `optimizer(params, hp)` -> a torch optimizer built from the dict `hp`;
- optionally `loss(output, target)` -> scalar tensor (mean squared error if absent);
- optionally `ensemble_in(output)` / `ensemble_out(mean)`: what the population's
  averaged prediction averages (e.g. probabilities) and how the mean goes back
  to the model's output form (e.g. log), identity if absent.
`batch_size` is a reserved hyperparameter name: when the space has it, it sets
the member's training batch size.

Optional hooks for real training code (a task without them trains exactly as before):
- `train_step(model, optimizer, batch, hp)` -> the batch's loss (a scalar tensor), after doing one
  optimisation step on `batch` (an (inputs, targets) pair) itself: gradient clipping, mixed
  precision, several losses.  hsmpi still owns the data order, epochs, divergence, selection and
  checkpoints; the vectorised path trains such a task one member at a time.
- `scheduler(optimizer, hp, steps_per_epoch, epochs)` -> a torch LR scheduler (or None), built for
  each member and stepped once per training batch; `epochs` is the run's M.  Its shape comes from the
  member's own hyperparameters, its position from the state it holds: a member that copies a donor
  takes the donor's step count and rebuilds its scheduler from its own new values at that step.
- `metrics(output, target)` -> dict name -> scalar tensor (batch means, averaged over a split as the
  loss is): on validation every session, on test at the end, in the history, lineage and report.
- `objective` (`"loss"` or a metric name) and `direction` (`"minimize"` or `"maximize"`): what
  selection, the winner, elitism and the returned model follow (`--objective`, `--direction` override
  them).  A NaN objective never wins.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from hsmpi.algorithm.space import validate_space

BUILTIN = {
    "regression1d": "hsmpi.tasks.regression1d:Regression1D",
    "friedman1": "hsmpi.tasks.friedman1:Friedman1",
    "diabetes": "hsmpi.tasks.diabetes:Diabetes",
    "digits": "hsmpi.tasks.digits:Digits",
    "digits-cnn": "hsmpi.tasks.digits_cnn:DigitsCNN",
    "sparse-regression": "hsmpi.tasks.sparse_regression:SparseRegression",
    "breast-cancer": "hsmpi.tasks.breast_cancer:BreastCancer",
    "moons-schedule": "hsmpi.tasks.moons_schedule:MoonsSchedule",
}

REQUIRED = ("data", "model", "optimizer")
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Objective:
    """What the search follows: the loss or a metric, minimised or maximised.

    `score` turns a value into a lower-is-better number, which is what
    selection compares (NaN stays NaN: it never wins, in either direction).
    """

    name: str = "loss"
    direction: str = "minimize"

    @property
    def is_loss(self) -> bool:
        """The plain validation loss, minimised: what a task without hooks selects on."""
        return self.name == "loss" and self.direction == "minimize"

    def score(self, value: float) -> float:
        return value if self.direction == "minimize" else -value

    def value(self, score: float) -> float:
        """The objective's value back from a score."""
        return score if self.direction == "minimize" else -score

    def describe(self) -> str:
        return self.name if self.is_loss else f"{self.name} ({'max' if self.direction == 'maximize' else 'min'})"


def task_objective(task: Any, objective: str | None = None, direction: str | None = None) -> Objective:
    """The objective a run follows: the settings' over the task's attributes over the loss, minimised.

    The task's direction is its objective's: the loss named in the settings, on a task that maximises a
    metric, is minimised unless the settings say otherwise.
    """
    name = objective if objective is not None else getattr(task, "objective", "loss")
    if direction is not None:
        way = direction
    elif name == "loss" and getattr(task, "objective", "loss") != "loss":
        way = "minimize"
    else:
        way = getattr(task, "direction", "minimize")
    if not isinstance(name, str) or not name:
        raise TaskError(f"the task's objective must be 'loss' or a metric's name, but is {name!r}")
    if way not in DIRECTIONS:
        raise TaskError(f"the task's direction must be one of {list(DIRECTIONS)}, but is {way!r}")
    return Objective(name, way)


def task_metrics(task: Any, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The task's metrics of one batch ({} when it has none)."""
    metrics = getattr(task, "metrics", None)
    return {} if metrics is None else metrics(output, target)


class TaskError(ValueError):
    """A task that cannot be found, imported or used."""


def _import_class(spec: str) -> type:
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise TaskError(
            f"task {spec!r} is not a built-in task ({', '.join(BUILTIN)}) nor of the form "
            "package.module:Class or path/to/file.py:Class"
        )
    where, _, name = target.rpartition(":")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise TaskError(f"task file {where!r} does not exist")
            mod_name = "hsmpi_task_" + os.path.splitext(os.path.basename(where))[0]
            mspec = importlib.util.spec_from_file_location(mod_name, where)
            if mspec is None or mspec.loader is None:
                raise TaskError(f"task file {where!r} cannot be imported")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except TaskError:
        raise
    except ModuleNotFoundError as err:
        extra = " (pip install 'hsmpi[tasks]' for the scikit-learn tasks)" if err.name == "sklearn" else ""
        raise TaskError(f"task {spec!r}: cannot import {where!r}: {err}{extra}") from None
    except Exception as err:
        raise TaskError(f"task {spec!r}: importing {where!r} raised {type(err).__name__}: {err}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise TaskError(f"task {spec!r}: {where!r} has no attribute {name!r}")
    if not isinstance(cls, type):
        raise TaskError(f"task {spec!r}: {name!r} is not a class")
    return cls


def load_task(spec: str) -> Any:
    """Import and instantiate a task, and check that it has what hsmpi needs."""
    cls = _import_class(spec)
    try:
        task = cls()
    except Exception as err:
        raise TaskError(f"task {spec!r}: {cls.__name__}() raised {type(err).__name__}: {err}") from None
    for attr in REQUIRED:
        if not callable(getattr(task, attr, None)):
            raise TaskError(f"task {spec!r}: {cls.__name__} has no method {attr}()")
    try:
        space = task.space
    except AttributeError:
        raise TaskError(f"task {spec!r}: {cls.__name__} has no `space`") from None
    except Exception as err:
        raise TaskError(f"task {spec!r}: reading `space` raised {type(err).__name__}: {err}") from None
    try:
        validate_space(space)
    except ValueError as err:
        raise TaskError(f"task {spec!r}: {err}") from None
    return task


def task_loss(task: Any, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's loss, mean squared error when it defines none."""
    loss = getattr(task, "loss", None)
    if loss is None:
        return torch.nn.functional.mse_loss(output, target)
    return loss(output, target)
