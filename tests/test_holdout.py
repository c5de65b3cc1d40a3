"""--holdout: the returned model is judged on a held-back part of the validation split that no session saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsmpi.config import Config, ConfigError
from hsmpi.engine.job import run
from hsmpi.errors import SetupError
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import task_loss

from tasks_for_tests import TinyAdam

ARGS = dict(population=4, epochs=6, sessions=3, seed=5, export_top=0, threads=1)


def _held_back_loss(task: TinyAdam, model: torch.nn.Module, fraction: float) -> float:
    _, val, _ = task.data(ARGS["seed"])
    x, y = val.tensors
    n = len(x)
    held = int(round(fraction * n))
    with torch.no_grad():
        return float(task_loss(task, model.eval()(x[n - held:]), y[n - held:]))


@pytest.mark.parametrize("select", ["winner", "truncation"])
def test_the_best_is_judged_on_the_held_back_part(tmp_path: Path, select: str) -> None:
    task = TinyAdam()
    result = run(task, comm=SerialComm(), log=None, out=str(tmp_path), holdout=0.4, select=select, **ARGS)
    # the returned model (the member, or with --returns auto the average) is judged on the held-back part
    assert result.best_val_loss == pytest.approx(_held_back_loss(task, result.returned_model(), 0.4), rel=1e-5)
    # The sessions' winners are still chosen on the rest: the recorded winner losses are not the held-back ones.
    assert result.history["winner_loss"][result.best_session] != pytest.approx(result.best_val_loss, rel=1e-9)


def test_without_holdout_the_best_is_judged_on_the_whole_validation_split(tmp_path: Path) -> None:
    task = TinyAdam()
    result = run(task, comm=SerialComm(), log=None, out=str(tmp_path), **ARGS)
    assert result.best_val_loss == pytest.approx(_held_back_loss(task, result.returned_model(), 1.0), rel=1e-5)


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "half"])
def test_bad_holdout_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="holdout must be a fraction in"):
        Config(holdout=bad)  # type: ignore[arg-type]


def test_a_holdout_that_leaves_nothing_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="holdout 0.001 of a validation split of"):
        run(TinyAdam(), comm=SerialComm(), log=None, out=str(tmp_path), holdout=0.001, **ARGS)
