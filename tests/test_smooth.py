"""--smooth N: members are selected on the mean of their validation scores after each of a session's last N
epochs, not on the one score after the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.config import Config, ConfigError
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member

from tasks_for_tests import NegLoss, TinyAdam

S, M, SESSIONS, SEED = 4, 6, 2, 5  # sessions of 3 epochs


def _history(tmp_path: Path, name: str, task: Any, **options: Any) -> dict[str, np.ndarray]:
    out = tmp_path / name
    hsmpi.run(task, population=S, epochs=M, sessions=SESSIONS, seed=SEED, threads=1, log=None, out=str(out),
              **{"vectorize": "off", **options})  # one at a time, as `_by_hand` trains
    with h5py.File(out / "results.h5", "r") as f:
        return {"val": f["history/val_loss"][()], "winner": f["history/winner"][()],
                "lr": f["history/hparams/lr"][()], "beta1": f["history/hparams/beta1"][()]}


def _by_hand(task: Any, member: int, hp: dict[str, Any], epochs: int) -> list[float]:
    """One member trained from the run's initial weights, its validation loss after every epoch."""
    train, val, _ = task.data(SEED)
    cpu = torch.device("cpu")
    data = Data(train, cpu)
    m = Member.create(task, member, hp, SEED, cpu, Config().independent_init, train_size=len(data), epochs=M)
    losses = []
    for _ in range(epochs):
        m.train(data, 1)
        losses.append(m.evaluate(Data(val, cpu)))
    return losses


@pytest.mark.parametrize("smooth", [2, 3])
def test_the_first_session_is_judged_on_the_mean_of_its_last_evaluations(tmp_path: Path, smooth: int) -> None:
    task = TinyAdam()
    plain = _history(tmp_path, "plain", task)
    smoothed = _history(tmp_path, f"smooth{smooth}", task, smooth=smooth)
    assert np.array_equal(plain["lr"][0], smoothed["lr"][0])  # the same first draws
    for i in range(S):
        hp = {"lr": float(plain["lr"][0, i]), "beta1": float(plain["beta1"][0, i])}
        losses = _by_hand(task, i, hp, M // SESSIONS)
        assert plain["val"][0, i] == pytest.approx(losses[-1], rel=1e-6)
        assert smoothed["val"][0, i] == pytest.approx(np.mean(losses[-smooth:]), rel=1e-6)
    assert not np.allclose(plain["val"][0], smoothed["val"][0])
    assert smoothed["winner"][0] == np.argmin(smoothed["val"][0])


def test_smooth_longer_than_a_session_uses_all_its_epochs(tmp_path: Path) -> None:
    three = _history(tmp_path, "three", TinyAdam(), smooth=3)
    many = _history(tmp_path, "many", TinyAdam(), smooth=50)
    assert np.array_equal(three["val"], many["val"]) and np.array_equal(three["winner"], many["winner"])


def test_smooth_follows_a_maximised_objective_as_it_does_the_loss(tmp_path: Path) -> None:
    by_loss = _history(tmp_path, "loss", TinyAdam(), smooth=2)
    by_metric = _history(tmp_path, "metric", NegLoss(), smooth=2)
    assert np.array_equal(by_loss["winner"], by_metric["winner"])
    assert np.allclose(by_loss["val"], by_metric["val"])


def test_smooth_must_be_a_positive_integer() -> None:
    assert Config().smooth == 1
    with pytest.raises(ConfigError, match="smooth must be at least 1, but got 0"):
        Config(smooth=0)
