"""Checkpoint and resume: a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import run_hsmpi, task_spec

EXIT_STOPPED = 75
BASE = ["--task", task_spec("Tiny"), "-S", "4", "-M", "8", "-m", "4", "--seed", "7", "--threads", "1"]


def _same(a: Path, b: Path) -> None:
    with h5py.File(a / "results.h5", "r") as f, h5py.File(b / "results.h5", "r") as g:
        for key in ("history/val_loss", "history/train_loss", "history/winner", "history/sources",
                    "test/best_loss", "test/ensemble_loss", "best/attrs"):
            if key == "best/attrs":
                assert dict(f["best"].attrs) == dict(g["best"].attrs)
                continue
            assert np.array_equal(f[key][()], g[key][()]), key
        for name in f["history/hparams"]:
            assert np.array_equal(f[f"history/hparams/{name}"][()], g[f"history/hparams/{name}"][()]), name
        for name in f["population/weights"]:
            assert np.array_equal(f[f"population/weights/{name}"][()], g[f"population/weights/{name}"][()]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference runs, one per selection rule."""
    out = {}
    for select in ("winner", "truncation"):
        folder = tmp_path_factory.mktemp(f"full-{select}")
        result = run_hsmpi([*BASE, "--select", select, "--out", str(folder)], ranks=2)
        assert result.returncode == 0, result.stderr
        out[select] = folder
    return out


@pytest.mark.parametrize("select", ["winner", "truncation"])
@pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.both_mpis), 3])
def test_stop_after_session_k_then_resume_equals_uninterrupted(
        k: int, select: str, uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    first = run_hsmpi([*BASE, "--select", select, "--out", str(tmp_path), "--stop-after", str(k)], ranks=2)
    assert first.returncode == EXIT_STOPPED, first.stderr
    assert f"stopped by --stop-after after session {k}/4" in first.stderr
    assert not (tmp_path / "results.h5").exists()
    second = run_hsmpi(["--resume", "auto", "--out", str(tmp_path)], ranks=2)
    assert second.returncode == 0, second.stderr
    assert f"{k} of 4 sessions done" in second.stdout
    _same(uninterrupted[select], tmp_path)


@pytest.mark.parametrize("before,after", [pytest.param(4, 2, marks=pytest.mark.both_mpis), (2, 4), (4, 1)])
def test_resume_on_another_number_of_ranks(before: int, after: int, uninterrupted: dict[str, Path],
                                           tmp_path: Path) -> None:
    first = run_hsmpi([*BASE, "--select", "winner", "--out", str(tmp_path), "--stop-after", "2"], ranks=before)
    assert first.returncode == EXIT_STOPPED, first.stderr
    second = run_hsmpi(["--resume", str(tmp_path / "checkpoint.h5")], ranks=after)
    assert second.returncode == 0, second.stderr
    _same(uninterrupted["winner"], tmp_path)


def test_truncated_checkpoint_falls_back_to_the_backup(uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    first = run_hsmpi([*BASE, "--select", "winner", "--out", str(tmp_path), "--stop-after", "3",
                       "--checkpoint-interval", "0"], ranks=2)
    assert first.returncode == EXIT_STOPPED
    latest = tmp_path / "checkpoint.h5"
    latest.write_bytes(latest.read_bytes()[:1000])
    second = run_hsmpi(["--resume", "auto", "--out", str(tmp_path)], ranks=2)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("falling back to the backup") >= 1
    assert "2 of 4 sessions done" in second.stdout
    _same(uninterrupted["winner"], tmp_path)  # the backup is one session older, and still exact


@pytest.mark.both_mpis
def test_a_finished_run_can_be_extended(tmp_path: Path) -> None:
    first = run_hsmpi([*BASE, "--select", "winner", "--out", str(tmp_path)], ranks=2)
    assert first.returncode == 0, first.stderr
    second = run_hsmpi(["--resume", "auto", "--out", str(tmp_path), "-m", "6", "-M", "12"], ranks=2)
    assert second.returncode == 0, second.stderr
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f["history/val_loss"].shape == (6, 4)
        assert f["history/epochs"][()].tolist() == [2, 2, 2, 2, 2, 2]
        assert (f["history/sources"][3] == f["history/winner"][3]).all(), "session 4 now has a selection step"
        assert f.attrs["sessions"] == 6


def test_the_last_checkpoint_is_written_by_rank_0s_neighbour_and_is_complete(tmp_path: Path) -> None:
    """With 2+ ranks on rank 0's node another rank writes the last checkpoint while rank 0 writes the results."""
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "--checkpoint-interval", "3600"], ranks=3)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "checkpoint.h5", "r") as c, h5py.File(tmp_path / "results.h5", "r") as r:
        assert c.attrs["next_session"] == 4 and bool(c.attrs["pending_selection"])
        assert sorted(c["states"]) == ["0", "1", "2", "3"]
        assert c["members/data_rng"].shape[0] == 4
        assert np.isclose(c.attrs["best_val_loss"], r["best"].attrs["val_loss"])
        best = {name: r[f"best/weights/{name}"][()] for name in r["best/weights"]}
        top1 = int(np.argmin(r["population/val_loss"][()]))
        first = {name: r[f"population/weights/{name}"][top1] for name in r["population/weights"]}
    # best.pt and the top-K files were handed to the same rank: they hold the results file's weights
    for file, expected in (("best.pt", best), ("top1.pt", first)):
        saved = torch.load(tmp_path / file, weights_only=True)
        assert sorted(saved) == sorted(expected)
        for name, array in expected.items():
            assert np.array_equal(saved[name].numpy(), array), (file, name)
    assert (tmp_path / "top3.pt").exists() and (tmp_path / "top.json").exists()
    assert not list(tmp_path.glob(".checkpoint-new*")) and not list(tmp_path.glob(".tmp-*"))


def test_a_final_checkpoint_that_cannot_be_written_is_one_clear_error_and_the_results_stay(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint-new.h5").mkdir()  # the checkpoint's rename target is a folder: the write fails
    (tmp_path / ".checkpoint-new.h5" / "x").write_text("")
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "--checkpoint-interval", "3600"], ranks=2)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("hsmpi: error: the final checkpoint could not be written") == 1, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f["history/val_loss"].shape == (4, 4)
    assert not (tmp_path / "checkpoint.h5").exists()


def _checkpoint_column(folder: Path) -> list[bool]:
    """Which sessions wrote a checkpoint (rank 0's checkpoint time is recorded only for those)."""
    with h5py.File(folder / "results.h5", "r") as f:
        return [bool(t > 0) for t in f["history/time/checkpoint"][()][:, 0]]


def test_checkpoint_interval_zero_writes_after_every_session(tmp_path: Path) -> None:
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "--checkpoint-interval", "0"], ranks=2)
    assert result.returncode == 0, result.stderr
    assert _checkpoint_column(tmp_path) == [True] * 4
    assert "not due" not in result.stdout


def test_a_long_checkpoint_interval_still_saves_the_last_session_and_every_stop(
        uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    long = ["--checkpoint-interval", "3600"]
    full = run_hsmpi([*BASE, "--select", "winner", "--out", str(tmp_path / "full"), *long], ranks=2)
    assert full.returncode == 0, full.stderr
    assert _checkpoint_column(tmp_path / "full") == [False, False, False, True]
    assert full.stdout.count("checkpoint not due") == 3
    first = run_hsmpi([*BASE, "--select", "winner", "--out", str(tmp_path / "s"), "--stop-after", "2", *long],
                      ranks=2)
    assert first.returncode == EXIT_STOPPED, first.stderr
    assert not (tmp_path / "s" / "checkpoint.prev.h5").exists(), "session 1 was not due, only the stop wrote"
    second = run_hsmpi(["--resume", "auto", "--out", str(tmp_path / "s")], ranks=2)
    assert second.returncode == 0, second.stderr
    assert "2 of 4 sessions done" in second.stdout
    _same(uninterrupted["winner"], tmp_path / "s")


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    result = run_hsmpi([*BASE, "--resume", "auto", "--out", str(tmp_path)], ranks=2)
    assert result.returncode == 0, result.stderr
    assert "starting a new run" in result.stdout


def test_keep_checkpoints(tmp_path: Path) -> None:
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "--keep-checkpoints", "3", "--checkpoint-interval", "0"],
                       ranks=2)
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-s*.h5"))
    assert kept == ["checkpoint-s0002.h5", "checkpoint-s0003.h5"]
    assert (tmp_path / "checkpoint.h5").exists() and (tmp_path / "checkpoint.prev.h5").exists()


def _stopped_run(tmp_path: Path) -> Path:
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "--stop-after", "2"], ranks=2)
    assert result.returncode == EXIT_STOPPED
    return tmp_path


def _refused(args: list[str], needle: str) -> None:
    result = run_hsmpi(args, ranks=2, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("hsmpi: error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_resume_refuses_another_population(tmp_path: Path) -> None:
    _refused(["--resume", "auto", "--out", str(_stopped_run(tmp_path)), "-S", "6"], "population = 4")


def test_resume_refuses_another_task(tmp_path: Path) -> None:
    _refused(["--resume", "auto", "--out", str(_stopped_run(tmp_path)), "--task", task_spec("TinyAdam")],
             "task = ")


def test_resume_refuses_another_seed(tmp_path: Path) -> None:
    _refused(["--resume", "auto", "--out", str(_stopped_run(tmp_path)), "--seed", "8"], "seed = 7")


def test_resume_refuses_a_changed_space(tmp_path: Path) -> None:
    source = Path(task_spec("Tiny").split(":")[0])
    copy = tmp_path / "edited_task.py"
    shutil.copy(source, copy)
    spec = f"{copy}:TinyAdam"
    out = tmp_path / "run"
    first = run_hsmpi(["--task", spec, "-S", "4", "-M", "8", "-m", "4", "--out", str(out), "--stop-after", "1"],
                      ranks=2)
    assert first.returncode == EXIT_STOPPED, first.stderr
    copy.write_text(copy.read_text().replace('"beta1": Uniform(0.5, 0.95)', '"beta1": Uniform(0.5, 0.9)'))
    _refused(["--resume", "auto", "--out", str(out)], "was made with the space")


def test_resume_refuses_fewer_sessions_than_done(tmp_path: Path) -> None:
    _refused(["--resume", "auto", "--out", str(_stopped_run(tmp_path)), "-m", "1"], "-m must be at least 2")


def test_resume_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "checkpoint.h5"
    bogus.write_text("not hdf5 at all")
    _refused(["--resume", str(bogus), "--out", str(tmp_path)], "not a readable checkpoint")


def test_resume_refuses_a_results_file(tmp_path: Path) -> None:
    result = run_hsmpi([*BASE, "--out", str(tmp_path), "-m", "2", "-M", "2"], ranks=2)
    assert result.returncode == 0
    _refused(["--resume", str(tmp_path / "results.h5")], "not an hsmpi checkpoint")


def test_resume_refuses_a_missing_path(tmp_path: Path) -> None:
    _refused(["--resume", str(tmp_path / "nope.h5")], "does not exist")


def test_checkpoint_due_rule() -> None:
    from hsmpi.io.checkpoint import AUTO_MAX_SECONDS, AUTO_MIN_SECONDS, due
    assert due(0.0, 0.0, 5.0), "0: after every session"
    assert not due(10.0, 9.9, 0.01) and due(10.0, 10.0, 0.01)
    assert not due(None, AUTO_MIN_SECONDS / 2, None) and due(None, AUTO_MIN_SECONDS, None), "auto: first"
    assert not due(None, 0.5, 0.001) and due(None, AUTO_MIN_SECONDS, 0.001), "auto: at least the minimum"
    assert not due(None, 4.9, 0.1) and due(None, 5.0, 0.1), "auto: 50x the last cost"
    assert not due(None, AUTO_MAX_SECONDS - 1, 100.0) and due(None, AUTO_MAX_SECONDS, 100.0), "auto: capped"
