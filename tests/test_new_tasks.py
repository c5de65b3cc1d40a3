"""The built-in tasks added for the quality benchmark's breadth: sparse-regression, breast-cancer, moons-schedule.

Their splits (sizes, dtypes, determinism, standardisation from the training split), breast-cancer's small
validation split, moons-schedule's learning-rate schedule, and a short hsmpi run of each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hsmpi.tasks import BUILTIN, load_task, task_loss, task_metrics, task_objective
from hsmpi.tasks.moons_schedule import lr_factor

pytest.importorskip("sklearn")

NEW = ("sparse-regression", "breast-cancer", "moons-schedule")

# name -> (train, val, test) sizes, input features, target dtype, target shape after the batch dimension
SPLITS = {
    "sparse-regression": ((480, 160, 160), 30, torch.float32, (1,)),
    "breast-cancer": ((355, 100, 114), 30, torch.int64, ()),
    "moons-schedule": ((600, 200, 200), 2, torch.int64, ()),
}

MOONS_HP = {"lr": 0.2, "momentum": 0.9, "warmup": 0.2, "decay": 0.01}


def _tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = split.tensors
    return x, y


def test_the_new_tasks_are_built_in_and_load() -> None:
    for name in NEW:
        assert name in BUILTIN
    for name in BUILTIN:  # every built-in task imports, instantiates and has a valid space
        load_task(name)


@pytest.mark.parametrize("name", NEW)
def test_splits_have_the_stated_sizes_and_dtypes(name: str) -> None:
    sizes, features, dtype, shape = SPLITS[name]
    task = load_task(name)
    splits = task.data(0)
    assert tuple(len(s) for s in splits) == sizes
    for split in splits:
        x, y = _tensors(split)
        assert x.dtype == torch.float32 and x.shape[1:] == (features,)
        assert y.dtype == dtype and y.shape[1:] == shape
        assert torch.isfinite(x).all()
    if dtype == torch.int64:  # two classes, both in every split
        for split in splits:
            assert set(_tensors(split)[1].tolist()) == {0, 1}


@pytest.mark.parametrize("name", NEW)
def test_splits_are_deterministic_per_seed_and_differ_across_seeds(name: str) -> None:
    task = load_task(name)
    a, again, other = task.data(3), task.data(3), task.data(4)
    for s1, s2, s3 in zip(a, again, other):
        for t1, t2, t3 in zip(s1.tensors, s2.tensors, s3.tensors):
            assert torch.equal(t1, t2)
            assert not torch.equal(t1, t3)


@pytest.mark.parametrize("name", NEW)
def test_inputs_are_standardised_with_the_training_split(name: str) -> None:
    train, val, test = load_task(name).data(1)
    x = _tensors(train)[0].double()
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(x.shape[1], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    for held in (val, test):  # standardised with the training split's statistics, not their own
        h = _tensors(held)[0].double()
        assert (h.mean(0).abs() > 1e-3).any() and ((h.std(0, unbiased=False) - 1).abs() > 1e-3).any()
    if name == "sparse-regression":  # the targets too
        y = _tensors(train)[1].double()
        assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-5
        assert abs(float(_tensors(val)[1].double().mean())) > 1e-4


def test_a_feature_constant_on_the_training_split_is_only_centred() -> None:
    from hsmpi.tasks._common import split

    x = np.arange(40, dtype=float).reshape(20, 2)
    x[:, 1] = 0.0
    order = np.random.default_rng(5).permutation(20)
    x[order[-1], 1] = 3.0  # non-blank in one test sample only: constant (0) on the training split
    train, _, test = split(x, np.arange(20.0), seed=5)
    assert torch.equal(train.tensors[0][:, 1], torch.zeros(len(train)))
    assert float(test.tensors[0][:, 1].abs().max()) == 3.0  # centred, not divided by its zero spread


def test_digits_inputs_stay_small_on_every_split() -> None:
    # sklearn's digits have pixels that are blank on some training splits and not in a validation or test
    # sample; standardising them must not make an input of 1e8 (as it did before: 25 of seeds 0-39).
    task = load_task("digits")
    for seed in (1, 3, 15):  # seeds whose val or test split once held such an input
        for part in task.data(seed):
            assert float(part.tensors[0].abs().max()) < 1e4


def test_breast_cancer_is_the_bundled_data_split_with_a_small_validation_split() -> None:
    from sklearn.datasets import load_breast_cancer

    raw_x, raw_y = load_breast_cancer(return_X_y=True)
    seed = 5
    train, val, test = load_task("breast-cancer").data(seed)
    assert len(val) == 100 and len(train) + len(val) + len(test) == len(raw_y)
    order = np.random.default_rng(seed).permutation(len(raw_y))
    first = raw_x[order[:len(train)]]
    mean, std = first.mean(0), first.std(0) + 1e-8
    for split, rows in ((train, order[:355]), (val, order[355:455]), (test, order[455:])):
        x, y = _tensors(split)
        np.testing.assert_allclose(x.numpy(), (raw_x[rows] - mean) / std, rtol=1e-5, atol=1e-5)
        assert y.tolist() == raw_y[rows].tolist()


def test_the_classification_tasks_select_on_the_loss_and_report_accuracy() -> None:
    for name in ("breast-cancer", "moons-schedule"):
        task = load_task(name)
        assert task_objective(task).is_loss
        output = torch.tensor([[2.0, -1.0], [0.0, 1.0], [3.0, 0.0]])
        target = torch.tensor([0, 1, 1])
        loss = task_loss(task, output, target)
        assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(output, target)))
        assert float(task_metrics(task, output, target)["accuracy"]) == pytest.approx(2 / 3)
        # the population average averages probabilities and goes back to log-probabilities
        assert torch.allclose(task.ensemble_out(task.ensemble_in(output)), torch.log_softmax(output, -1))


def _lrs(hp: dict[str, float], steps_per_epoch: int, epochs: int) -> list[float]:
    """The learning rate of each training step under moons-schedule's scheduler."""
    task = load_task("moons-schedule")
    torch.manual_seed(0)
    model = task.model()
    optimizer = task.optimizer(model.parameters(), hp)
    scheduler = task.scheduler(optimizer, hp, steps_per_epoch, epochs)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_moons_schedule_warms_up_then_decays_as_its_hyperparameters_say() -> None:
    lrs = _lrs(MOONS_HP, steps_per_epoch=10, epochs=5)  # 50 steps, 10 of them warming up
    assert len(lrs) == 50
    base = MOONS_HP["lr"]
    assert lrs[0] == pytest.approx(base / 10)
    assert lrs[9] == pytest.approx(base)  # the warm-up ends at the full rate
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:10]))  # rising during warm-up
    assert all(b < a for a, b in zip(lrs[9:], lrs[10:]))  # falling after it
    assert lrs[-1] == pytest.approx(base * MOONS_HP["decay"])  # `decay` of the rate at the run's last step
    ratios = [b / a for a, b in zip(lrs[9:], lrs[10:])]
    assert max(ratios) == pytest.approx(min(ratios))  # an exponential decay: a constant ratio per step
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(base * lr_factor(step, 10, 50, MOONS_HP["decay"]))


def test_moons_schedule_follows_other_values() -> None:
    flat = _lrs({**MOONS_HP, "warmup": 0.0, "decay": 1.0}, steps_per_epoch=4, epochs=3)
    assert flat == pytest.approx([MOONS_HP["lr"]] * 12)  # no warm-up, no decay: constant
    gentle = _lrs({**MOONS_HP, "warmup": 0.0, "decay": 0.5}, steps_per_epoch=4, epochs=3)
    assert gentle[0] == pytest.approx(MOONS_HP["lr"]) and gentle[-1] == pytest.approx(MOONS_HP["lr"] * 0.5)
    longer = _lrs({**MOONS_HP, "warmup": 0.3}, steps_per_epoch=10, epochs=5)  # 15 warm-up steps
    assert longer[14] == pytest.approx(MOONS_HP["lr"]) and longer[13] < longer[14]
    # the schedule spans the run's M epochs: more epochs, a slower decay
    assert _lrs(MOONS_HP, 10, 10)[49] > _lrs(MOONS_HP, 10, 5)[49]


def test_a_benchmark_trial_runs_the_schedule_as_an_hsmpi_member_does(tmp_path: Path) -> None:
    """The baselines' trials pass the training split's size and M to the scheduler hook, as hsmpi does."""
    from benchmarks.quality.trial import Problem, train_trial
    from hsmpi.engine.job import run
    from hsmpi.parallel.comm import SerialComm

    problem = Problem("moons-schedule", seed=2, population=1, epochs=3, sessions=1)
    result = run("moons-schedule", comm=SerialComm(), log=None, population=1, epochs=3, sessions=1, seed=2,
                 out=str(tmp_path), export_top=0, threads=1)
    trial = train_trial(problem, 0, result.best_hparams, 3)
    assert trial.val[-1] == pytest.approx(result.best_val_loss, rel=1e-6)
    assert trial.test == pytest.approx(result.test_loss, rel=1e-6)
    steep = train_trial(problem, 0, {**result.best_hparams, "warmup": 0.0, "decay": 1e-3}, 3)
    flat = train_trial(problem, 0, {**result.best_hparams, "warmup": 0.0, "decay": 1.0}, 3)
    assert steep.val != flat.val  # the schedule is in effect


@pytest.mark.parametrize("name", NEW)
def test_a_short_run_finishes_with_a_finite_test_loss(name: str, tmp_path: Path) -> None:
    import hsmpi
    from hsmpi.parallel.comm import SerialComm

    result = hsmpi.run(name, comm=SerialComm(), population=2, epochs=2, sessions=1, threads=1,
                       out=str(tmp_path), log=None)
    assert result.finite_model and math.isfinite(result.test_loss) and math.isfinite(result.best_val_loss)
    if name != "sparse-regression":
        assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
