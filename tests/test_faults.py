"""Never hang, never lose work: signals and a killed rank, on a real 4-rank job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, mpirun_cmd, rank_pid, run_hsmpi, task_spec

pytestmark = pytest.mark.both_mpis  # CI repeats these under Open MPI

EXIT_STOPPED = 75
ARGS = ["--task", task_spec("Slow"), "-S", "4", "-M", "24", "-m", "12", "--batch-size", "8", "--seed", "4",
        "--threads", "1"]


def _start(out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*mpirun_cmd(4), sys.executable, "-m", "hsmpi", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.h5").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = run_hsmpi([*ARGS, "--out", str(out)], ranks=4, timeout=180)
    assert result.returncode == 0, result.stderr
    return out


def _same_results(a: Path, b: Path) -> None:
    with h5py.File(a / "results.h5", "r") as f, h5py.File(b / "results.h5", "r") as g:
        for key in ("history/val_loss", "history/winner", "test/best_loss", "test/ensemble_loss"):
            assert np.array_equal(f[key][()], g[key][()]), key


def test_sigterm_to_one_rank_checkpoints_exits_75_and_resumes(reference: Path, tmp_path: Path) -> None:
    """From outside, as SLURM or a user sends it (SIGUSR1 and SIGINT, which take the same path, are sent
    from inside a run in tests/test_job_mpi.py)."""
    signum = signal.SIGTERM
    proc = _start(tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, proc)
        os.kill(rank_pid(tmp_path, 2), signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, (stdout, stderr)
    assert stderr.count(f"stopped by {signum.name} after session") == 1, stderr
    assert not (tmp_path / "results.h5").exists()
    with h5py.File(tmp_path / "checkpoint.h5", "r") as f:  # the stop's checkpoint holds the session it names
        stopped_after = int(stderr.split(f"stopped by {signum.name} after session ")[1].split("/")[0])
        assert f.attrs["next_session"] == stopped_after
    resumed = run_hsmpi(["--resume", "auto", "--out", str(tmp_path)], ranks=4, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    _same_results(reference, tmp_path)


def test_kill_9_of_one_rank_ends_the_job_and_the_checkpoint_resumes(reference: Path, tmp_path: Path) -> None:
    proc = _start(tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, proc)
        time.sleep(0.5)
        os.kill(rank_pid(tmp_path, 1), signal.SIGKILL)
        start = time.monotonic()
        proc.communicate(timeout=30)
        ended = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert ended < 15, f"the job took {ended:.1f}s to end after a rank was killed"
    assert not (tmp_path / "results.h5").exists()
    resumed = run_hsmpi(["--resume", "auto", "--out", str(tmp_path)], ranks=2, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "sessions done" in resumed.stdout
    _same_results(reference, tmp_path)


def test_a_rank_left_running_after_its_mpirun_fails_the_test_and_is_killed() -> None:
    """run_hsmpi's guard against orphaned ranks (seen once in CI: three ranks spun for an hour and slowed
    every test after them): a process with the rank's exact command line that outlives mpirun is an error."""
    from conftest import _no_rank_left

    cmd = [sys.executable, "-c", "import time; time.sleep(120)", "orphan-guard-test"]
    proc = subprocess.Popen(cmd)
    # Popen can return while the child is still inside exec, with an empty /proc cmdline: wait until it is the
    # process it will be (a rank left after its mpirun ended is long past that)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1] != [a.encode() for a in cmd]:
        assert time.monotonic() < deadline, "the child never showed its command line"
        time.sleep(0.01)
    try:
        with pytest.raises(AssertionError, match=r"1 rank\(s\) of .* outlived mpirun by 1 s \(killed\)"):
            _no_rank_left(cmd, grace=1.0)
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
    _no_rank_left(cmd, grace=1.0)  # none left now: no error
