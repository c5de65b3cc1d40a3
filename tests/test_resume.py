"""Checkpoint and resume: a resumed run ends exactly where an uninterrupted one does.

The logic runs in one process (SerialComm; tests/test_job_mpi.py does the same
across layouts on real ranks); the command line's stop (exit 75) and resume,
a change of rank count, and the writes of the last checkpoint by another rank
run end to end under mpirun.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.algorithm.space import Uniform
from hsmpi.engine.job import Stopped
from hsmpi.io import checkpoint
from hsmpi.io.checkpoint import CheckpointError
from hsmpi.parallel.comm import SerialComm

from conftest import run_hsmpi, task_spec
from tasks_for_tests import Tiny, TinyAdam

EXIT_STOPPED = 75
OPTIONS: dict[str, Any] = dict(population=4, epochs=8, sessions=4, seed=7, threads=1)
ARGS = ["--task", task_spec("Tiny"), "-S", "4", "-M", "8", "-m", "4", "--seed", "7", "--threads", "1"]


def _run(out: Path, task: Any = None, **options: Any) -> tuple[hsmpi.Result, list[str]]:
    lines: list[str] = []
    result = hsmpi.run(task or Tiny(), comm=SerialComm(), log=lines.append, out=str(out), **{**OPTIONS, **options})
    return result, lines


def _same(a: Path, b: Path) -> None:
    with h5py.File(a / "results.h5", "r") as f, h5py.File(b / "results.h5", "r") as g:
        for key in ("history/val_loss", "history/train_loss", "history/winner", "history/sources",
                    "test/best_loss", "test/ensemble_loss"):
            assert np.array_equal(f[key][()], g[key][()], equal_nan=True), key
        assert dict(f["best"].attrs) == dict(g["best"].attrs)
        for name in f["history/hparams"]:
            assert np.array_equal(f[f"history/hparams/{name}"][()], g[f"history/hparams/{name}"][()]), name
        for name in f["population/weights"]:
            assert np.array_equal(f[f"population/weights/{name}"][()], g[f"population/weights/{name}"][()]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference runs, one per selection rule, in one process."""
    out = {}
    for select in ("winner", "truncation"):
        folder = tmp_path_factory.mktemp(f"full-{select}")
        _run(folder, select=select)
        out[select] = folder
    return out


def _resumed_equals_whole(tmp_path: Path, k: int, **options: Any) -> Path:
    """Stop a run after session (or step) k and resume it; it must end as the same run not stopped does.
    The uninterrupted run's results file."""
    _stopped(tmp_path / "resumed", k, **options)
    _run(tmp_path / "resumed", resume="auto", **options)
    _run(tmp_path / "whole", **options)
    _same(tmp_path / "resumed", tmp_path / "whole")
    return tmp_path / "whole" / "results.h5"


def _stopped(out: Path, k: int = 2, **options: Any) -> Path:
    with pytest.raises(Stopped, match=f"stopped by --stop-after after (session|step) {k}/"):
        _run(out, stop_after=k, **options)
    assert not (out / "results.h5").exists()
    return out


# ---- in one process ---------------------------------------------------------------------------------------


def test_the_tpe_sampler_resumes_to_the_same_run(tmp_path: Path) -> None:
    """tpe's model is the history, which the checkpoint holds: a run stopped and resumed draws the same
    values as one that was not (and the model changed them: they differ from urs's with the same streams)."""
    _stopped(tmp_path / "resumed", 2, select="truncation", sampler="tpe")
    _run(tmp_path / "resumed", select="truncation", sampler="tpe", resume="auto")
    _run(tmp_path / "whole", select="truncation", sampler="tpe")
    _same(tmp_path / "resumed", tmp_path / "whole")
    _run(tmp_path / "urs", select="truncation")
    with h5py.File(tmp_path / "whole" / "results.h5", "r") as f, h5py.File(tmp_path / "urs" / "results.h5") as g:
        assert not np.array_equal(f["history/hparams/lr"][()], g["history/hparams/lr"][()])


def test_growing_sessions_resume_to_the_same_run(tmp_path: Path) -> None:
    """--session-growth: the schedule comes from the settings, so a resumed run trains the same sessions."""
    options = dict(select="truncation", session_growth=2.0, epochs=10)
    with h5py.File(_resumed_equals_whole(tmp_path, 2, **options), "r") as f:
        assert list(f["history/epochs"][()]) == [1, 2, 3, 4]


def test_rungs_resume_to_the_same_run(tmp_path: Path) -> None:
    """--prune-at: a run stopped between a rung and the rest of its session, and resumed, trains the same
    steps as one that was not; the rungs restarted members (their sources in the history)."""
    options = dict(select="truncation", prune_at=0.5)
    with h5py.File(_resumed_equals_whole(tmp_path, 3, **options), "r") as f:
        assert list(f["history/epochs"][()]) == [1, 1] * 4
        sources, winners = f["history/sources"][()], f["history/winner"][()]
    for k in (0, 2, 4, 6):  # each rung: the worst one (of 4) restarts from the rung's best
        moved = [i for i, s in enumerate(sources[k]) if s != i]
        assert len(moved) == 1 and sources[k][moved[0]] == winners[k], (k, sources[k])


def test_sessions_that_end_at_a_plateau_resume_to_the_same_run(tmp_path: Path) -> None:
    """--plateau: the epochs each session ran are in the history, so a resumed run gives the later sessions
    the same budgets as one that was not stopped; the sessions really adapted (unequal, adding up to M)."""
    options = dict(select="truncation", plateau=0.2, epochs=16)
    with h5py.File(_resumed_equals_whole(tmp_path, 2, **options), "r") as f:
        epochs = f["history/epochs"][()].tolist()
    assert sum(epochs) == 16 and len(epochs) == 4 and epochs != [4] * 4, epochs


@pytest.mark.parametrize("before, after", [
    (dict(prune_at=0.5), dict(prune_at=0.25, epochs=12)),
    (dict(prune_at=0.5), dict(sessions=5)),
    (dict(prune_at=0.5), dict(prune_at=None)),
    ({}, dict(prune_at=0.5)),
    (dict(plateau=0.1), dict(plateau=0.1, epochs=12)),
    (dict(plateau=0.1), dict(plateau=0.2)),
], ids=["other-rung", "more-sessions", "rungs-dropped", "rungs-added", "plateau-more-epochs", "other-plateau"])
def test_resume_with_rungs_or_a_plateau_refuses_another_schedule(tmp_path: Path, before: dict[str, Any],
                                                    after: dict[str, Any]) -> None:
    _stopped(tmp_path, 2, **before)
    with pytest.raises(CheckpointError, match="a run with rungs or --plateau resumes only with the same") as err:
        _run(tmp_path, resume="auto", **after)
    assert "\n" not in str(err.value)


def test_a_truncated_checkpoint_falls_back_to_the_backup(uninterrupted: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _stopped(tmp_path, 3, select="winner", checkpoint_interval=0)
    latest = tmp_path / "checkpoint.h5"
    latest.write_bytes(latest.read_bytes()[:1000])
    _, lines = _run(tmp_path, select="winner", resume="auto")
    assert "falling back to the backup" in capsys.readouterr().err
    assert any("2 of 4 sessions done" in line for line in lines)
    _same(uninterrupted["winner"], tmp_path)  # the backup is one session older, and still exact


def _shard(folder: Path, manifest: str = "checkpoint.h5") -> Path:
    """The one shard file of the generation `manifest` names (one rank, winner rule: one stored state)."""
    files = list(checkpoint.shard_index(checkpoint.read(str(folder / manifest)))["files"])
    assert len(files) == 1
    return folder / files[0]


def test_a_truncated_or_missing_shard_falls_back_to_the_previous_generation(
        uninterrupted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for how in ("truncated", "missing"):
        out = _stopped(tmp_path / how, 3, select="winner", checkpoint_interval=0)
        shard = _shard(out)
        assert shard != _shard(out, "checkpoint.prev.h5"), "each generation has its own files"
        if how == "missing":
            shard.unlink()
        else:
            shard.write_bytes(shard.read_bytes()[:-100])
        _, lines = _run(out, select="winner", resume="auto")
        err = capsys.readouterr().err
        assert f"its shard {shard}" in err and "falling back to the backup" in err, err
        assert ("is missing" if how == "missing" else "truncated or overwritten") in err
        assert any("2 of 4 sessions done" in line for line in lines)
        _same(uninterrupted["winner"], out)


def test_a_manifest_copied_by_hand_keeps_its_generation_and_resumes(uninterrupted: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    out = _stopped(tmp_path, 2, select="winner", checkpoint_interval=0)
    shutil.copy(out / "checkpoint.h5", out / "after-session-2.h5")
    _run(out, select="winner", resume="auto")  # two more checkpoints, each pruning what no manifest names
    _, lines = _run(out, select="winner", resume=str(out / "after-session-2.h5"))
    assert any("2 of 4 sessions done" in line for line in lines)
    _same(uninterrupted["winner"], out)


def test_a_shard_with_other_bytes_or_no_backup_is_refused_naming_the_file(tmp_path: Path) -> None:
    out = _stopped(tmp_path / "a", 2, select="winner", checkpoint_interval=3600)  # one checkpoint, no backup
    shard = _shard(out)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"its shard {shard} is missing"):
        _run(out, select="winner", resume="auto")
    out = _stopped(tmp_path / "b", 2, select="winner", checkpoint_interval=3600)
    shard = _shard(out)
    with h5py.File(shard, "r+") as f:  # the same size, other bytes
        name = next(iter(f["states"]))
        data = f[f"states/{name}"]
        data[:8] = np.asarray(data[:8]) ^ 0xFF
    with pytest.raises(CheckpointError, match=f"the shard {shard} of .* holds other bytes for state {name}"):
        _run(out, select="winner", resume="auto")


def test_a_checkpoint_from_before_shards_resumes_to_the_same_run(tmp_path: Path) -> None:
    """tests/data/checkpoint-0.1: written by hsmpi before shards (every state inside checkpoint.h5) after
    session 2 of the truncation reference run (on another machine); it resumes to the same end, and the run
    goes on in shards."""
    out = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "checkpoint-0.1", out)
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert "states" in f and "shards" not in f
    # It was made when every member started from the shared weights (the default until 2026-12-05).
    _, lines = _run(out, select="truncation", resume="auto", independent_init=False)
    assert any("2 of 4 sessions done" in line for line in lines)
    reference = tmp_path / "shared-init"
    _run(reference, select="truncation", independent_init=False)
    _same_decisions(reference, out)
    assert "shards" in checkpoint.read(str(out / "checkpoint.h5"))


def _same_decisions(a: Path, b: Path) -> None:
    """The same run up to float rounding: the checkpoint in tests/data was written on another machine, and
    PyTorch's CPU kernels round differently by instruction set (AVX2, AVX-512), so its stored losses and
    states differ from this machine's in the last bits. Every decision (winners, who copied whom, every
    hyperparameter drawn) must still be the same, and every number equal to rounding."""
    with h5py.File(a / "results.h5", "r") as f, h5py.File(b / "results.h5", "r") as g:
        for key in ("history/winner", "history/sources"):
            assert np.array_equal(f[key][()], g[key][()]), key
        for name in f["history/hparams"]:
            assert np.array_equal(f[f"history/hparams/{name}"][()], g[f"history/hparams/{name}"][()]), name
        for key in ("history/val_loss", "history/train_loss", "test/best_loss", "test/ensemble_loss"):
            assert np.allclose(f[key][()], g[key][()], rtol=1e-4, atol=0, equal_nan=True), key
        for name in f["population/weights"]:
            assert np.allclose(f[f"population/weights/{name}"][()], g[f"population/weights/{name}"][()],
                               rtol=1e-3, atol=1e-5), name
        assert f["best"].attrs["member"] == g["best"].attrs["member"]


def test_a_finished_run_can_be_extended_and_its_last_session_gets_its_selection(tmp_path: Path) -> None:
    _run(tmp_path, select="winner")
    _run(tmp_path, select="winner", resume="auto", sessions=6, epochs=12)
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f["history/val_loss"].shape == (6, 4)
        assert f["history/epochs"][()].tolist() == [2, 2, 2, 2, 2, 2]
        assert (f["history/sources"][3] == f["history/winner"][3]).all(), "session 4 now has a selection step"
        assert f.attrs["sessions"] == 6
    sessions = [line.split(",")[0] for line in (tmp_path / "lineage.jsonl").read_text().splitlines()]
    assert sessions == [f'{{"session": {s}' for s in range(1, 7)]


def _checkpoint_column(folder: Path) -> list[bool]:
    """Which sessions wrote a checkpoint (rank 0's checkpoint time is recorded only for those)."""
    with h5py.File(folder / "results.h5", "r") as f:
        return [bool(t > 0) for t in f["history/time/checkpoint"][()][:, 0]]


def test_checkpoint_interval_zero_writes_after_every_session(tmp_path: Path) -> None:
    _, lines = _run(tmp_path, checkpoint_interval=0)
    assert _checkpoint_column(tmp_path) == [True] * 4
    assert not any("not due" in line for line in lines)


def test_a_long_checkpoint_interval_still_saves_the_last_session_and_every_stop(
        uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    _, lines = _run(tmp_path / "full", select="winner", checkpoint_interval=3600)
    assert _checkpoint_column(tmp_path / "full") == [False, False, False, True]
    assert sum("checkpoint not due" in line for line in lines) == 3
    _stopped(tmp_path / "s", 2, select="winner", checkpoint_interval=3600)
    assert not (tmp_path / "s" / "checkpoint.prev.h5").exists(), "session 1 was not due, only the stop wrote"
    _, lines = _run(tmp_path / "s", select="winner", resume="auto")
    assert any("2 of 4 sessions done" in line for line in lines)
    _same(uninterrupted["winner"], tmp_path / "s")


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path: Path) -> None:
    _, lines = _run(tmp_path, resume="auto")
    assert any("starting a new run" in line for line in lines)


def test_keep_checkpoints(tmp_path: Path) -> None:
    _run(tmp_path, keep_checkpoints=3, checkpoint_interval=0)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-s*.h5"))
    assert kept == ["checkpoint-s0002.h5", "checkpoint-s0003.h5"]
    assert (tmp_path / "checkpoint.h5").exists() and (tmp_path / "checkpoint.prev.h5").exists()
    # whole generations: the sessions the manifests hold (the backup is also kept as s0003), and only those
    named = {checkpoint.shard_index(checkpoint.read(p))["generation"] for p in checkpoint.manifests(str(tmp_path))}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(named)
    assert sorted(n[:5] for n in named) == ["s0002", "s0003", "s0004"]


class EditedSpace(TinyAdam):
    """TinyAdam under the same name, its space edited after a checkpoint was made."""


@pytest.mark.parametrize("change, needle", [
    (dict(population=6), "population = 4"),
    (dict(seed=8), "seed = 7"),
    (dict(task="TinyAdam"), "task = "),
    (dict(sessions=1), "-m must be at least 2"),
    (dict(sessions=2, epochs=8), "its last one already copied the winner: -m must be more than 2"),
], ids=["population", "seed", "task", "fewer-sessions", "no-more-sessions"])
def test_resume_refuses_what_does_not_match(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    _stopped(tmp_path)
    change = dict(change)
    task = TinyAdam() if change.pop("task", None) else None
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(")) as err:
        _run(tmp_path, task, resume="auto", **change)
    assert "\n" not in str(err.value)


def test_resume_refuses_a_changed_space(tmp_path: Path) -> None:
    task = EditedSpace()
    _stopped(tmp_path, task=task)
    task.space = {**task.space, "beta1": Uniform(0.5, 0.9)}  # type: ignore[misc]
    with pytest.raises(CheckpointError, match="was made with the space"):
        _run(tmp_path, task, resume="auto")


@pytest.mark.parametrize("what, needle", [
    ("not-hdf5", "not a readable checkpoint"), ("results", "not an hsmpi checkpoint"), ("missing", "does not exist")])
def test_resume_refuses_a_path_that_is_not_a_checkpoint(tmp_path: Path, what: str, needle: str) -> None:
    path = tmp_path / "checkpoint.h5"
    if what == "not-hdf5":
        path.write_text("not hdf5 at all")
    elif what == "results":
        _run(tmp_path / "done", sessions=2, epochs=2)
        path = tmp_path / "done" / "results.h5"
    with pytest.raises(CheckpointError, match=needle):
        _run(tmp_path / "out", resume=str(path))


def test_checkpoint_due_rule() -> None:
    from hsmpi.io.checkpoint import AUTO_MAX_SECONDS, AUTO_MIN_SECONDS, due
    assert due(0.0, 0.0, 5.0), "0: after every session"
    assert not due(10.0, 9.9, 0.01) and due(10.0, 10.0, 0.01)
    assert not due(None, AUTO_MIN_SECONDS / 2, None) and due(None, AUTO_MIN_SECONDS, None), "auto: first"
    assert not due(None, 0.5, 0.001) and due(None, AUTO_MIN_SECONDS, 0.001), "auto: at least the minimum"
    assert not due(None, 4.9, 0.1) and due(None, 5.0, 0.1), "auto: 50x the last cost"
    assert not due(None, AUTO_MAX_SECONDS - 1, 100.0) and due(None, AUTO_MAX_SECONDS, 100.0), "auto: capped"


# ---- end to end under mpirun ------------------------------------------------------------------------------


@pytest.mark.both_mpis
def test_the_command_line_stops_with_75_and_resumes_to_the_same_bytes(
        uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    select = "truncation"  # the other rule's stop and resume: in one process above and on real ranks in test_job_mpi
    first = run_hsmpi([*ARGS, "--select", select, "--out", str(tmp_path), "--stop-after", "2"], ranks=2)
    assert first.returncode == EXIT_STOPPED, first.stderr
    assert "stopped by --stop-after after session 2/4" in first.stderr
    assert not (tmp_path / "results.h5").exists()
    second = run_hsmpi(["--resume", "auto", "--out", str(tmp_path)], ranks=2)
    assert second.returncode == 0, second.stderr
    assert "2 of 4 sessions done" in second.stdout
    _same(uninterrupted[select], tmp_path)


@pytest.mark.both_mpis
def test_stopped_on_4_ranks_resumed_on_2(uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    first = run_hsmpi([*ARGS, "--select", "winner", "--out", str(tmp_path), "--stop-after", "2"], ranks=4)
    assert first.returncode == EXIT_STOPPED, first.stderr
    second = run_hsmpi(["--resume", str(tmp_path / "checkpoint.h5")], ranks=2)
    assert second.returncode == 0, second.stderr
    _same(uninterrupted["winner"], tmp_path)


def test_the_last_checkpoint_is_one_shard_per_rank_and_complete(tmp_path: Path) -> None:
    """Every rank writes the states it holds to its own shard (in the background, while rank 0 writes the
    results file); the manifest names them all; the best state is stored once, as the winner's."""
    result = run_hsmpi([*ARGS, "--out", str(tmp_path), "--checkpoint-interval", "3600"], ranks=3)
    assert result.returncode == 0, result.stderr
    manifest = checkpoint.read(str(tmp_path / "checkpoint.h5"))
    index = checkpoint.shard_index(manifest)
    assert manifest["next_session"] == 4 and bool(manifest["pending_selection"])
    assert sorted(index["states"]) == ["0", "1", "2", "3"], "after the last session no member copied another"
    assert manifest["best"]["key"] == str(manifest["best"]["member"])
    files = {name.rsplit("/", 1)[1] for name in index["files"]}
    assert files == {"rank00000.h5", "rank00001.h5", "rank00002.h5"}  # 4 members on 3 ranks: 2, 1, 1
    assert {index["states"][k]["file"].rsplit("/", 1)[1] for k in ("0", "1")} == {"rank00000.h5"}
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1, "the generation before it was removed"
    with h5py.File(tmp_path / "checkpoint.h5", "r") as c, h5py.File(tmp_path / "results.h5", "r") as r:
        assert c["members/data_rng"].shape[0] == 4
        assert np.isclose(c.attrs["best_val_loss"], r["best"].attrs["val_loss"])
        best = {name: r[f"best/weights/{name}"][()] for name in r["best/weights"]}
        top1 = int(np.argmin(r["population/val_loss"][()]))
        first = {name: r[f"population/weights/{name}"][top1] for name in r["population/weights"]}
    # best.pt (rank 0) and the top-K files (their members' owners) hold the results file's weights
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
    result = run_hsmpi([*ARGS, "--out", str(tmp_path), "--checkpoint-interval", "3600"], ranks=2)
    assert result.returncode == 74, result.stderr
    assert result.stderr.count("hsmpi: error: the final checkpoint could not be written") == 1, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f["history/val_loss"].shape == (4, 4)
    assert not (tmp_path / "checkpoint.h5").exists()


def test_a_prune_at_that_makes_no_rungs_does_not_bind_the_schedule(tmp_path: Path) -> None:
    """With sessions of one epoch --prune-at splits nothing, so the run extends on resume as any run does."""
    _run(tmp_path, prune_at=0.5, epochs=4, sessions=4)
    _, lines = _run(tmp_path, prune_at=0.5, epochs=6, sessions=6, resume="auto")
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert list(f["history/epochs"][()]) == [1] * 6
