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
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import torch

from hsmpi.algorithm.space import validate_space

BUILTIN = {
    "regression1d": "hsmpi.tasks.regression1d:Regression1D",
    "friedman1": "hsmpi.tasks.friedman1:Friedman1",
    "diabetes": "hsmpi.tasks.diabetes:Diabetes",
    "digits": "hsmpi.tasks.digits:Digits",
}

REQUIRED = ("data", "model", "optimizer")


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
