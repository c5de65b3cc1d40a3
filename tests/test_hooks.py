"""The optional task hooks: train_step, scheduler, metrics, objective and direction, map-style data, buffers.

In one process (SerialComm); tests/test_job_mpi.py runs a map-style task with
DataLoader workers across layouts on real ranks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.engine.data import Data
from hsmpi.engine.job import Stopped
from hsmpi.engine.member import Member
from hsmpi.errors import SetupError
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import TaskError

from tasks_for_tests import (
    BadDirection,
    Coarse,
    ItemData,
    MetricNotScalar,
    NaNMetric,
    NegLoss,
    OwnStep,
    Scheduled,
    SchedulerNotOne,
    StepReturnsFloat,
    StepReturnsVector,
    TinyAdam,
    UnknownObjective,
    WithBatchNorm,
)

SMALL: dict[str, Any] = dict(population=4, epochs=6, sessions=3, seed=3, threads=1, export_top=1)


def _run(tmp: Path, task: Any, **options: Any) -> tuple[hsmpi.Result, list[str]]:
    lines: list[str] = []
    result = hsmpi.run(task, comm=SerialComm(), log=lines.append, out=str(tmp), **{**SMALL, **options})
    return result, lines


def _member(task: Any, index: int, hp: dict[str, Any], train: Data) -> Member:
    return Member.create(task, index, hp, 0, torch.device("cpu"), train_size=len(train), epochs=6)


def _copy(donor: Member, receiver: Member, hp: dict[str, Any]) -> None:
    header = donor.header()
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(header.nbytes)
    donor.pack(header, buffer.device_view())
    receiver.adopt(header, buffer.device_view(), hp)


# ---- scheduler ----------------------------------------------------------------------------------------------


def test_the_schedule_is_stepped_once_per_batch_and_a_copy_takes_its_donors_position_with_its_own_shape() -> None:
    task = Scheduled()
    train = Data(task.data(0)[0], torch.device("cpu"))
    donor = _member(task, 0, {"lr": 0.05, "beta1": 0.9, "gamma": 0.5}, train)
    receiver = _member(task, 1, {"lr": 0.02, "beta1": 0.8, "gamma": 0.9}, train)
    donor.train(train, 2)
    batches = 2 * train.steps(donor.batch_size)
    assert donor.steps == batches
    assert donor.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (batches // 3))
    new = {"lr": 0.01, "beta1": 0.7, "gamma": 0.8}
    _copy(donor, receiver, new)
    assert receiver.steps == batches  # the donor's position ...
    assert receiver.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.8 ** (batches // 3))  # ... own shape
    receiver.train(train, 1)
    assert receiver.steps == batches + train.steps(receiver.batch_size)


def test_a_run_with_a_schedule_resumes_exactly(tmp_path: Path) -> None:
    whole, _ = _run(tmp_path / "whole", Scheduled())
    with pytest.raises(Stopped):
        _run(tmp_path / "stopped", Scheduled(), stop_after=2)
    resumed, _ = _run(tmp_path / "stopped", Scheduled(), resume="auto")
    assert resumed.test_loss == whole.test_loss
    with h5py.File(tmp_path / "whole" / "results.h5") as a, h5py.File(tmp_path / "stopped" / "results.h5") as b:
        assert np.array_equal(a["history/val_loss"][()], b["history/val_loss"][()])
        assert np.array_equal(a["history/hparams/gamma"][()], b["history/hparams/gamma"][()])


# ---- train_step ---------------------------------------------------------------------------------------------


def test_the_tasks_own_train_step_replaces_hsmpis_and_the_vectorised_path_says_why_once(tmp_path: Path) -> None:
    OwnStep.calls = 0
    _, lines = _run(tmp_path, OwnStep(), vectorize="on")
    train = Data(OwnStep().data(SMALL["seed"])[0], torch.device("cpu"))
    sessions_of_epochs = SMALL["epochs"] * SMALL["population"]
    assert OwnStep.calls == sessions_of_epochs * train.steps(64) + 1  # + the check on a copy before training
    assert sum("the task has its own train_step" in line for line in lines) == 1


# ---- metrics and the objective ------------------------------------------------------------------------------


def test_a_metric_that_is_minus_the_loss_maximised_chooses_exactly_as_the_loss(tmp_path: Path) -> None:
    by_loss, _ = _run(tmp_path / "loss", TinyAdam())
    by_metric, lines = _run(tmp_path / "metric", NegLoss())
    assert by_metric.test_loss == by_loss.test_loss and by_metric.best_member == by_loss.best_member
    assert by_metric.best_objective == pytest.approx(-by_metric.best_val_loss, rel=1e-6)
    assert set(by_metric.test_metrics) == {"negloss", "mae"}
    with h5py.File(tmp_path / "loss" / "results.h5") as a, h5py.File(tmp_path / "metric" / "results.h5") as b:
        for key in ("history/winner", "history/sources", "history/val_loss"):
            assert np.array_equal(a[key][()], b[key][()]), key
        assert b["history"].attrs["objective"] == "negloss" and b["history"].attrs["direction"] == "maximize"
        assert b["history/metrics/negloss"].shape == b["history/val_loss"].shape
        np.testing.assert_allclose(b["history/metrics/negloss"][()], -b["history/val_loss"][()], rtol=1e-6)
        np.testing.assert_allclose(b["history/winner_objective"][()], -b["history/winner_loss"][()], rtol=1e-6)
        assert b["best"].attrs["objective"] == "negloss" and "test/metrics/mae" in b
        assert "history/metrics" not in a and "objective" not in a["best"].attrs  # old tasks: files as before
    line = json.loads((tmp_path / "metric" / "lineage.jsonl").read_text().splitlines()[0])
    assert line["objective"]["name"] == "negloss" and set(line["members"][0]["metrics"]) == {"negloss", "mae"}
    assert any("best val negloss" in ln for ln in lines) and any("test negloss" in ln for ln in lines)


def test_the_command_line_overrides_the_tasks_objective(tmp_path: Path) -> None:
    _, lines = _run(tmp_path, NegLoss(), objective="mae", direction="minimize")
    with h5py.File(tmp_path / "results.h5") as f:
        assert f["history"].attrs["objective"] == "mae" and f["history"].attrs["direction"] == "minimize"
        mae = f["history/metrics/mae"][()]
        winners = f["history/winner"][()]
        assert all(mae[k, w] == np.nanmin(mae[k]) for k, w in enumerate(winners))


def test_the_loss_named_on_a_task_that_maximises_a_metric_is_minimised(tmp_path: Path) -> None:
    """`--objective loss` on a task whose direction (maximize) is its metric's: the loss is still minimised,
    so the run chooses exactly as on the plain task."""
    plain, _ = _run(tmp_path / "plain", TinyAdam())
    named, _ = _run(tmp_path / "named", NegLoss(), objective="loss")
    with h5py.File(tmp_path / "named" / "results.h5") as f:
        assert "direction" not in f["history"].attrs  # the loss, minimised: written as every loss run is
        val, winners = f["history/val_loss"][()], f["history/winner"][()]
        assert all(val[k, w] == np.nanmin(val[k]) for k, w in enumerate(winners))
    assert named.test_loss == plain.test_loss and named.best_member == plain.best_member


@pytest.mark.parametrize("tie_break", ["index", "loss"])
def test_equal_scores_are_ranked_by_the_tie_break(tmp_path: Path, tie_break: str) -> None:
    """A metric that ties often: each session's winner is the first of the best by index, or (`loss`) the
    one of them with the lowest validation loss; truncation's bottom quarter is the last in the same order."""
    result, _ = _run(tmp_path, Coarse(), population=8, epochs=8, sessions=4, tie_break=tie_break, export_top=3,
                     returns="average", average_top=3)
    with h5py.File(tmp_path / "results.h5") as f:
        within, val = f["history/metrics/within"][()], f["history/val_loss"][()]
        winners, sources = f["history/winner"][()], f["history/sources"][()]
    tied = [np.flatnonzero(row == row.max()) for row in within]
    assert max(len(t) for t in tied) >= 2, "the metric must tie for the test to say anything"
    for k, members in enumerate(tied):
        expected = members[np.argmin(val[k, members])] if tie_break == "loss" else members[0]
        assert winners[k] == expected, k
        second = val[k] if tie_break == "loss" else np.zeros(8)
        order = np.lexsort((np.arange(8), second, -within[k]))
        copied = np.flatnonzero(sources[k] != np.arange(8))
        if k < len(tied) - 1:  # the last session copies no one
            assert sorted(copied) == sorted(order[-2:]), k  # ceil(0.25 x 8) = 2
            assert set(sources[k][copied]) <= set(order[:2]), k
    assert result.best_member == winners[-1]
    top = json.loads((tmp_path / "top.json").read_text())  # the exports and the average follow the same order
    assert [t["member"] for t in top["top"]] == list(order[:3])
    assert top["average"]["members"] == sorted(order[:3])
    if tie_break == "loss":
        index, _ = _run(tmp_path / "index", Coarse(), population=8, epochs=8, sessions=4)
        assert index.best_member != result.best_member or index.test_loss != result.test_loss, \
            "with ties at the top, breaking them by the loss changes the run"


def test_the_tie_break_changes_nothing_when_the_objective_is_the_loss(tmp_path: Path) -> None:
    by_index, _ = _run(tmp_path / "index", TinyAdam())
    by_loss, _ = _run(tmp_path / "loss", TinyAdam(), tie_break="loss")
    assert (by_loss.test_loss, by_loss.best_member) == (by_index.test_loss, by_index.best_member)


def test_a_nan_objective_never_wins_even_maximised(tmp_path: Path) -> None:
    _run(tmp_path, NaNMetric(), population=8, independent_init=True)
    with h5py.File(tmp_path / "results.h5") as f:
        value = f["history/metrics/negloss"][()]
        winners = f["history/winner"][()]
    assert np.isnan(value).any(), "the test task should give some member a NaN objective"
    for k, w in enumerate(winners):
        if np.isfinite(value[k]).any():
            assert np.isfinite(value[k, w]) and value[k, w] == np.nanmax(value[k])


@pytest.mark.parametrize("task, error, needle", [
    (StepReturnsFloat(), SetupError, "train_step must return the batch's loss as a scalar tensor"),
    (StepReturnsVector(), SetupError, "train_step must return the batch's loss as a scalar tensor"),
    (SchedulerNotOne(), SetupError, "scheduler must return a torch.optim.lr_scheduler.LRScheduler or None"),
    (UnknownObjective(), SetupError, "the objective 'accuracy' is not a metric the task's metrics() returns"),
    (BadDirection(), TaskError, "direction must be one of ['minimize', 'maximize']"),
    (MetricNotScalar(), SetupError, "the task's metric 'err' must be a scalar tensor"),
], ids=["step-float", "step-vector", "scheduler", "objective", "direction", "metric"])
def test_a_broken_hook_is_one_clear_error_before_training(tmp_path: Path, task: Any, error: type,
                                                         needle: str) -> None:
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as err:
        _run(tmp_path, task)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "lineage.jsonl").exists(), "no session may start"


# ---- map-style data and buffers -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_a_map_style_dataset_trains_as_the_same_data_in_a_tensor_dataset(tmp_path: Path, workers: int) -> None:
    """The loader hands the member's own order: item by item (with or without workers) as sliced from tensors.
    Both one member at a time: `auto` batches the tensors (its bits are another path's) and not the items."""
    tensors, _ = _run(tmp_path / "tensors", TinyAdam(), vectorize="off")
    items, _ = _run(tmp_path / f"items{workers}", ItemData(), workers=workers, vectorize="off")
    assert items.test_loss == tensors.test_loss


def test_batchnorm_statistics_travel_with_a_copy_and_resume_exactly(tmp_path: Path) -> None:
    task = WithBatchNorm()
    train = Data(task.data(0)[0], torch.device("cpu"))
    donor = _member(task, 0, {"lr": 0.05, "beta1": 0.9}, train)
    receiver = _member(task, 1, {"lr": 0.02, "beta1": 0.8}, train)
    donor.train(train, 1)
    _copy(donor, receiver, {"lr": 0.01, "beta1": 0.7})
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(receiver.model.state_dict()[name], donor.model.state_dict()[name]), name
    whole, _ = _run(tmp_path / "whole", task)
    with pytest.raises(Stopped):
        _run(tmp_path / "stopped", task, stop_after=1)
    resumed, _ = _run(tmp_path / "stopped", task, resume="auto")
    assert resumed.test_loss == whole.test_loss and not math.isnan(whole.test_loss)


def test_digits_cnn_uses_every_hook(tmp_path: Path) -> None:
    """The built-in example: map-style images, BatchNorm, dropout, a warm-up cosine schedule, clipping, accuracy."""
    result, lines = _run(tmp_path, "digits-cnn", population=2, epochs=2, sessions=2)
    assert 0.0 <= result.best_objective <= 1.0 and set(result.test_metrics) == {"accuracy"}
    with h5py.File(tmp_path / "results.h5") as f:
        assert f["history"].attrs["objective"] == "accuracy" and f["history"].attrs["direction"] == "maximize"
        assert f["best"].attrs["objective_value"] == pytest.approx(result.best_objective)
    assert any("best val accuracy" in line for line in lines)


def test_a_map_style_run_with_a_worker_resumes_exactly(tmp_path: Path) -> None:
    whole, _ = _run(tmp_path / "whole", ItemData(), workers=1)
    with pytest.raises(Stopped):
        _run(tmp_path / "stopped", ItemData(), workers=1, stop_after=1)
    resumed, _ = _run(tmp_path / "stopped", ItemData(), workers=1, resume="auto")
    assert resumed.test_loss == whole.test_loss
