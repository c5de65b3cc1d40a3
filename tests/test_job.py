"""hsmpi.engine.job in one process (SerialComm): the run's ends, its summary, resume and stops."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.cli.report import load_history, summary
from hsmpi.engine.job import Stopped
from hsmpi.errors import NoFiniteModel
from hsmpi.parallel.comm import SerialComm

from tasks_for_tests import AllDiverge, Diverging, TinyAdam

SMALL = dict(population=4, epochs=4, sessions=4, seed=7, threads=1, export_top=0)


def _run(tmp: Path, task: object = None, **options: object) -> tuple[hsmpi.Result, list[str]]:
    lines: list[str] = []
    result = hsmpi.run(task or TinyAdam(), comm=SerialComm(), log=lines.append, out=str(tmp), **{**SMALL, **options})
    return result, lines


def test_a_run_where_no_member_ever_had_a_finite_loss_says_so_and_still_writes_marked_results(tmp_path: Path) -> None:
    with pytest.raises(NoFiniteModel, match="no member ever had a finite validation loss in 2 sessions") as err:
        _run(tmp_path, AllDiverge(), population=2, epochs=2, sessions=2)
    assert err.value.result is not None and not err.value.result.finite_model
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert not f.attrs["finite_model"]
        assert np.isinf(f["history/winner_loss"][()]).all()


def test_export_top_0_still_writes_best_pt_and_top_json(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, export_top=0)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in result.best_model.state_dict().items())
    described = json.loads((tmp_path / "top.json").read_text())
    assert described["top"] == [] and described["best"]["member"] == result.best_member
    assert not list(tmp_path.glob("top*.pt"))


def test_a_run_where_only_some_sessions_diverged_ends_as_usual(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, Diverging(), population=4, epochs=3, sessions=3, seed=1)
    assert result.finite_model
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f.attrs["finite_model"]


def _shares(summary: str) -> dict[str, float]:
    return {name.strip(): float(value) for name, value in re.findall(r"([a-z -]+) (-?[\d.]+)%", summary)}


def test_the_summary_counts_this_process_only_and_names_torch_start_up(tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        _run(tmp_path, stop_after=3)
    _, lines = _run(tmp_path, resume="auto")
    summary = next(line for line in lines if line.startswith("time (rank 0):"))
    shares = _shares(summary)
    assert "torch start-up" in shares and "setup and finish" in shares, summary
    assert all(v >= 0 for v in shares.values()), summary
    assert shares["training and validation"] <= 100.0


@pytest.mark.parametrize("select", ["truncation", "winner"])
def test_stop_after_then_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path: Path, select: str) -> None:
    whole, _ = _run(tmp_path / "whole", select=select)
    for k in (1, 2, 3):  # every session boundary
        folder = tmp_path / f"stop{k}"
        with pytest.raises(Stopped, match=f"after session {k}/4"):
            _run(folder, select=select, stop_after=k)
        resumed, lines = _run(folder, select=select, resume="auto")
        assert any(f"{k} of 4 sessions done" in line for line in lines)
        assert resumed.test_loss == whole.test_loss and resumed.ensemble_test_loss == whole.ensemble_test_loss
        with h5py.File(tmp_path / "whole" / "results.h5") as a, h5py.File(folder / "results.h5") as b:
            for key in ("history/val_loss", "history/train_loss", "history/sources", "history/winner"):
                assert np.array_equal(a[key][()], b[key][()], equal_nan=True), (k, key)
            for name in a["population/weights"]:
                assert np.array_equal(a[f"population/weights/{name}"][()], b[f"population/weights/{name}"][()])
        lineage = (folder / "lineage.jsonl").read_text().splitlines()
        assert [line.split(",")[0] for line in lineage] == [f'{{"session": {s}' for s in range(1, 5)]


def test_rungs_restart_the_worst_inside_each_session_and_the_lines_say_so(tmp_path: Path) -> None:
    """--prune-at: every session is a rung's step and the rest's; the settings line counts sessions and
    steps, each rung's line and lineage record name the members it restarted, and the run differs from the
    same run without rungs."""
    options = dict(population=8, epochs=8, sessions=2, select="truncation")
    ruled, lines = _run(tmp_path / "rungs", prune_at=0.25, **options)
    plain, _ = _run(tmp_path / "plain", **options)
    assert "M=8 epochs in m=2 sessions | a rung at 0.25 of each session restarts the worst 25% of the members " \
        "(4 steps)" in lines[0]
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(" |")[0] for s in steps] == [f"step {k}/4" for k in range(1, 5)]
    assert [bool(re.search(r"rung: members \d+, \d+ restart from member \d+$", s)) for s in steps] == \
        [True, False, True, False]
    lineage = (tmp_path / "rungs" / "lineage.jsonl").read_text().splitlines()
    notes = [json.loads(line).get("note", "") for line in lineage]
    assert [n.startswith("rung: ") for n in notes] == [True, False, True, False], notes
    with h5py.File(tmp_path / "rungs" / "results.h5") as f:
        assert f["history/epochs"][()].tolist() == [1, 3, 1, 3]
    assert ruled.test_loss != plain.test_loss
    assert re.search(r"\(member \d+, step 4\)", next(line for line in lines if line.startswith("test loss")))
    with pytest.raises(Stopped, match=r"after step 1/4"):
        _run(tmp_path / "stopped", prune_at=0.25, stop_after=1, **options)
    table = summary(load_history(str(tmp_path / "rungs")))
    assert "| step | epochs done |" in table
    rows = [line.split(" | ")[0] for line in table.splitlines() if re.match(r"\| \d", line)]
    assert rows == ["| 1 (rung)", "| 2", "| 3 (rung)", "| 4"]  # the report marks them


def test_sessions_end_at_a_plateau_and_the_saved_epochs_go_to_later_ones(tmp_path: Path) -> None:
    """--plateau: a session ends once its best improves by less than the fraction in an epoch (after two at
    least), every session but the last gets its share of what is left, and the epochs add up to M."""
    options = dict(population=4, epochs=20, sessions=4, select="truncation")
    adapted, lines = _run(tmp_path / "plateau", plateau=0.5, **options)
    fixed, _ = _run(tmp_path / "fixed", **options)
    assert "a session ends early once its best improves by less than 50% in an epoch" in lines[0]
    with h5py.File(tmp_path / "plateau" / "results.h5") as f:
        epochs = f["history/epochs"][()].tolist()
    assert sum(epochs) == 20 and len(epochs) == 4 and epochs[-1] > 5, epochs
    assert all(2 <= e for e in epochs[:-1]) and min(epochs[:-1]) < 5, epochs
    done = [int(re.search(r"epochs (\d+)/20", line).group(1)) for line in lines if line.startswith("session ")]
    assert done == np.cumsum(epochs).tolist()
    with h5py.File(tmp_path / "fixed" / "results.h5") as f:
        assert f["history/epochs"][()].tolist() == [5] * 4  # without it, as before
    assert adapted.test_loss != fixed.test_loss


def test_what_counts_as_improved_for_plateau() -> None:
    from hsmpi.engine.search import _improved

    assert _improved(1.0, 0.89, 0.1) and not _improved(1.0, 0.91, 0.1)  # by at least the fraction
    assert _improved(-0.5, -0.6, 0.1) and not _improved(-0.5, -0.52, 0.1)  # maximised metrics, signed
    assert _improved(0.0, -0.1, 0.1) and not _improved(0.0, 0.0, 0.1)  # from zero: any fall
    assert _improved(math.inf, 3.0, 0.1) and not _improved(3.0, math.inf, 0.1) and not _improved(1.0, math.nan, 0.1)


@pytest.mark.parametrize("explore", [0.0, 1.0])
def test_explore_reaches_the_draws_of_a_run(tmp_path: Path, explore: float) -> None:
    # A box of half-width 0.01 keeps every new lr within 10**(2 * 0.02) of the winner's; with --explore 1
    # each one is a fresh draw from [1e-3, 1e-1] instead.
    _, lines = _run(tmp_path, select="winner", radius=0.01, explore=explore)
    assert ("explore=1.0" in lines[0]) is (explore > 0)
    with h5py.File(tmp_path / "results.h5", "r") as f:
        lr, winner = f["history/hparams/lr"][()], f["history/winner"][()]
        assert json.loads(f.attrs["config"])["explore"] == explore
    factors = [abs(math.log10(lr[k + 1][i] / lr[k][winner[k]]))
               for k in range(len(winner) - 1) for i in range(lr.shape[1]) if i != winner[k]]
    assert len(factors) == 9
    assert (max(factors) <= 0.04 + 1e-9) is (explore == 0.0)
