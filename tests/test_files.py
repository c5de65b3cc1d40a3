"""hsmpi.io.files: no half-written file, no traceback flood on a full disk, no litter after a kill -9.

The full-disk tests mount a small tmpfs (root on Linux; skipped with the reason elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.engine.job import Stopped
from hsmpi.engine.member import Member
from hsmpi.engine.observers import _Pending
from hsmpi.io import checkpoint, files, hdf5
from hsmpi.io.files import DiskError, remove_litter, write_atomic
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm
from hsmpi.parallel.share import Saved

from conftest import ROOT, mpirun_cmd, rank_pid, run_hsmpi
from tasks_for_tests import TinyAdam

OPTIONS = dict(population=8, epochs=12, sessions=12, seed=2, threads=1, checkpoint_interval=0, export_top=0)


def _mount(folder: Path, size: str) -> None:
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("mounting a small tmpfs needs root on Linux")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.2 MB file system: room for one small checkpoint, not for several."""
    folder = tmp_path / "small"
    _mount(folder, "1200k")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _big(f: h5py.File) -> None:
    hdf5.dataset(f, "a", np.ones(2_000_000))  # 16 MB


def test_a_write_that_fills_the_disk_is_one_error_and_leaves_nothing(small_disk: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    path = str(small_disk / "state.h5")
    with pytest.raises(DiskError, match=r"state.h5 could not be written in .* \(No space left on device"):
        write_atomic(path, _big, nbytes=0)  # the size not told: the write itself fails
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert os.listdir(small_disk) == []


def test_a_write_that_cannot_fit_is_refused_before_it_starts(small_disk: Path) -> None:
    with pytest.raises(DiskError, match=r"it needs about 17\.\d MB and 1\.\d MB are free"):
        write_atomic(str(small_disk / "state.h5"), _big, nbytes=16_000_000)
    assert os.listdir(small_disk) == []


def test_a_full_disk_mid_run_names_the_intact_checkpoint_and_the_run_goes_on_from_it(
        small_disk: Path, tmp_path: Path) -> None:
    out = small_disk / "run"
    with pytest.raises(DiskError) as err:
        hsmpi.run("regression1d", comm=SerialComm(), log=None, out=str(out), keep_checkpoints=20, **OPTIONS)
    message = err.value.strerror
    assert "could not be written in" in message and "No space left on device" in message
    assert "is intact: free space and run again with --resume auto" in message
    intact = int(message.split("the checkpoint after session ")[2].split(" is intact")[0])
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # "free space": the same folder where there is room
    resumed = hsmpi.run("regression1d", comm=SerialComm(), log=None, out=str(moved), resume="auto", **OPTIONS)
    whole = hsmpi.run("regression1d", comm=SerialComm(), log=None, out=str(tmp_path / "whole"), **OPTIONS)
    assert intact >= 1 and resumed.test_loss == whole.test_loss


def test_the_command_line_says_it_in_one_line_with_exit_74(small_disk: Path) -> None:
    out = small_disk / "cli"
    result = run_hsmpi(["-S", "8", "-M", "12", "-m", "12", "--threads", "1", "--checkpoint-interval", "0",
                        "--keep-checkpoints", "20", "--out", str(out)], ranks=2, timeout=120)
    assert result.returncode == 74, (result.stdout, result.stderr)
    assert result.stderr.count("hsmpi: error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "No space left on device" in result.stderr and "is intact" in result.stderr


def test_litter_is_recognised_by_name_and_only_that(tmp_path: Path) -> None:
    litter = [".tmp-abc123.h5", ".tmp-x.json", ".checkpoint-new.h5", "checkpoint-s0003.h5.tmp", "best.pt.tmp",
              "top2.pt.tmp", "lineage.jsonl.tmp"]
    kept = ["checkpoint.h5", "checkpoint.prev.h5", "checkpoint-s0002.h5", "results.h5", "best.pt", "notes.tmp"]
    for name in litter + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-folder").mkdir()
    assert remove_litter(str(tmp_path)) == sorted(litter)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [".tmp-folder"])


KILL_ARGS = ["-S", "4", "-M", "6", "-m", "3", "--threads", "1", "--checkpoint-interval", "0"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run the killed ones must end like, uninterrupted, on the same 2 ranks."""
    out = tmp_path_factory.mktemp("whole")
    done = run_hsmpi([*KILL_ARGS, "--out", str(out)], ranks=2, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def _hidden(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob(".*")]


@pytest.mark.parametrize("killed, match, skip", [
    (1, "*/checkpoints/s0002-*/rank00001.h5", "0"),  # rank 1 while it writes its shard of the 2nd checkpoint
    (0, "*/.checkpoint-new.h5", "1"),  # rank 0 while it writes the 2nd checkpoint's manifest
], ids=["shard", "manifest"])
def test_a_kill_9_during_a_checkpoint_write_resumes_from_the_one_before_and_leaves_nothing(
        whole: Path, tmp_path: Path, killed: int, match: str, skip: str) -> None:
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HSMPI_TEST_SLOW_WRITE="30", HSMPI_TEST_SLOW_MATCH=match,
               HSMPI_TEST_SLOW_SKIP=skip)  # that one write waits 30 s before its rename
    proc = subprocess.Popen([*mpirun_cmd(2), sys.executable, "-m", "hsmpi", *KILL_ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def in_flight() -> bool:
        if killed == 1:  # rank 0's shard is written, rank 1's waits
            generation = "checkpoints/s0002-*"
            return bool(list(out.glob(f"{generation}/rank00000.h5")) and list(out.glob(f"{generation}/.tmp-*")))
        return (out / "checkpoint.h5").exists() and bool(list(out.glob(".tmp-*.h5")))

    try:
        deadline = time.monotonic() + 90
        while not in_flight():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no write in flight appeared"
            time.sleep(0.05)
        os.kill(rank_pid(out, killed), signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert _hidden(out), "the write was cut short: its temporary file is there"
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert f.attrs["next_session"] == 1, "the first checkpoint is the newest complete one"
    done = run_hsmpi([*KILL_ARGS, "--out", str(out), "--resume", "auto"], ranks=2, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 of 3 sessions done" in done.stdout
    assert "that interrupted writes left" in done.stdout and "checkpoints/s0002-" in done.stdout
    assert not _hidden(out), _hidden(out)
    with h5py.File(whole / "results.h5", "r") as a, h5py.File(out / "results.h5", "r") as b:
        for key in ("history/val_loss", "history/sources", "test/best_loss", "test/ensemble_loss"):
            assert np.array_equal(a[key][()], b[key][()]), key
        for name in a["population/weights"]:
            assert np.array_equal(a[f"population/weights/{name}"][()], b[f"population/weights/{name}"][()]), name
    named = {checkpoint.shard_index(checkpoint.read(p))["generation"] for p in checkpoint.manifests(str(out))}
    assert {p.name for p in (out / "checkpoints").iterdir()} == named, "only generations a manifest names stay"


def test_stopped_runs_leave_no_litter(tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        hsmpi.run("regression1d", comm=SerialComm(), log=None, out=str(tmp_path), stop_after=2, **OPTIONS)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], os.listdir(tmp_path)


def test_the_share_buffer_is_lent_back_once_the_states_are_in_the_shard_before_its_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last checkpoint's writer frees the share buffer (which the returned model goes out through) as
    soon as every member's bytes are in the shard, not after its fsync and rename; the shard holds the
    members' states even when the buffer is overwritten from then on."""
    cpu = torch.device("cpu")
    task = TinyAdam()
    members = {str(i): Member.create(task, i, {"lr": 0.01, "beta1": 0.9}, seed=3, device=cpu) for i in range(3)}
    expected = {key: Saved.of(m, flatstate.Buffer(cpu)).data for key, m in members.items()}
    gate = threading.Event()

    def before_rename(path: str) -> None:  # the shard is written and fsynced: hold the writer there
        gate.wait(120)

    monkeypatch.setattr(files, "_test_only_pause", before_rename)
    name = checkpoint.shard_file("s0001-test", 0)
    pending, buffer = _Pending(0, "s0001-test", None, "the checkpoint"), flatstate.Buffer(cpu)
    pending.start(str(tmp_path), name, dict(members), buffer)
    try:
        assert pending.released.wait(30), "the writer did not lend the buffer back before its rename"
        assert not (tmp_path / name).exists()
        buffer.host.fill_(255)  # step 4 uses the buffer now
    finally:
        gate.set()
        assert pending.thread is not None
        pending.thread.join(120)
    assert pending.failure is None and pending.record is not None
    index = json.loads(checkpoint.index_of("s0001-test", [pending.record]))
    for key, data in expected.items():
        assert np.array_equal(checkpoint.read_state(str(tmp_path / "checkpoint.h5"), index, key)[1], data), key
