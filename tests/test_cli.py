"""The command line: a usage error is one clear line and exit 2; a failure on one rank ends every rank.

The messages are checked in process (`hsmpi.cli.main` on this process's one
rank, no training starts); what only a real job shows (two ranks agreeing on
an error one of them found, printing once, a failure ending a 4-rank job) runs
under mpirun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsmpi.engine.signals import STOP_SIGNALS

from conftest import ROOT, run_hsmpi, task_spec

SMALL = ["-S", "4", "-M", "2", "-m", "2", "--threads", "1"]


def _one_error(result, needle: str) -> None:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.startswith("hsmpi: error:")]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert "session 1/" not in result.stdout, "no training may start after a usage error"


BAD_INPUTS = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-S", "many"], "invalid int value"),
    (["-M", "5", "-m", "10"], "sessions (-m) must not exceed epochs"),
    (["-M", "0"], "epochs (-M) must be at least 1"),
    (["--sampler", "grid"], "invalid choice: 'grid'"),
    (["--radius", "0"], "radius must be in (0, 1]"),
    (["--radius-final", "1.5"], "radius-final: radius must be in (0, 1], but got 1.5"),
    (["--explore", "1.5"], "explore must be a probability in [0, 1], but got 1.5"),
    (["--holdout", "1"], "holdout must be a fraction in [0, 1), but got 1.0"),
    (["--checkpoint-interval", "-5"], "checkpoint-interval must be 'auto' or seconds >= 0, but got -5.0"),
    (["--checkpoint-interval", "soon"], "argument --checkpoint-interval: expected seconds or 'auto', got 'soon'"),
    (["--task", task_spec("TinyAdam"), "--holdout", "0.001"], "holdout 0.001 of a validation split of"),
    (["--truncation-fraction", "0.9", "--select", "truncation"], "fraction must be in (0, 0.5]"),
    (["--task", "nosuch"], "is not a built-in task"),
    (["--task", "nosuch_pkg.mod:Task"], "cannot import 'nosuch_pkg.mod'"),
    (["--task", "missing/file.py:Task"], "does not exist"),
    (["--task", "hsmpi.tasks.friedman1:Nope"], "has no attribute 'Nope'"),
    (["--task", task_spec("BadSpace")], "low > 0 must hold"),
    (["--task", task_spec("NoModel")], "has no method model()"),
    (["--task", task_spec("WrongOutput")], "does not match the train targets' shape"),
    (["--task", task_spec("EmptyData")], "val split is empty"),
    (["--task", task_spec("MismatchedSplits")], "val split has inputs (4,)"),
    (["--task", task_spec("RejectsHparams")], "rejected member 0's hyperparameters"),
    (["-S", "1"], "more ranks (2) than members (-S 1)"),
    (["-S", "6", "--members-per-rank", "2"], "must equal ranks x members-per-rank"),
    (["-S", "4", "--islands", "5"], "islands (5) must not exceed the members (-S 4)"),
    (["--out", "/proc/hsmpi-cannot-write-here"], "cannot write to the output folder"),
    (["--device", "cuda"], "device cuda was asked for"),
    (["--task", task_spec("FailsOnRank1")], "on another rank: task"),
    (["--task", task_spec("StepReturnsFloat")], "train_step must return the batch's loss as a scalar tensor"),
    (["--task", task_spec("SchedulerNotOne")], "scheduler must return a torch.optim.lr_scheduler.LRScheduler"),
    (["--task", task_spec("UnknownObjective")], "the objective 'accuracy' is not a metric"),
    (["--task", task_spec("BadDirection")], "direction must be one of ['minimize', 'maximize']"),
    (["--task", task_spec("MetricNotScalar")], "the task's metric 'err' must be a scalar tensor"),
    (["--objective", "accuracy"], "the objective 'accuracy' is not a metric the task's metrics() returns"),
    (["--direction", "up"], "invalid choice: 'up'"),
    (["--workers", "-1"], "workers must be at least 0, but got -1"),
]


# Repeated under a second MPI: a flag, a task space, and a failure on one rank only (asked of MPI itself).
BOTH_MPIS = {"unrecognized arguments: --bogus", "low > 0 must hold", "on another rank: task"}
CASES = [pytest.param(args, needle, id=needle[:40], marks=[pytest.mark.both_mpis] if needle in BOTH_MPIS else [])
         for args, needle in BAD_INPUTS]


NEED_TWO_RANKS = {"more ranks (2) than members (-S 1)", "on another rank: task"}


@pytest.fixture
def signals_restored() -> Iterator[None]:
    """main() installs hsmpi's stop handlers once a run starts: give the test process its own back."""
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> SimpleNamespace:
    from hsmpi.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


@pytest.mark.parametrize("args,needle", [c for c in CASES if c.values[1] not in BOTH_MPIS | NEED_TWO_RANKS])
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], needle: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], signals_restored: None) -> None:
    if "--device" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    _one_error(_in_process([*SMALL, *out, *args], capsys), needle)


@pytest.mark.parametrize("args,needle", [c for c in CASES if c.values[1] in BOTH_MPIS | NEED_TWO_RANKS])
def test_bad_input_on_2_ranks_is_one_line_printed_once(args: list[str], needle: str, tmp_path: Path) -> None:
    _one_error(run_hsmpi([*SMALL, "--out", str(tmp_path / "out"), *args], ranks=2, timeout=60), needle)


@pytest.mark.parametrize("text,needle", [
    ("population = 4\nepochs = 'many'\n", "epochs (-M) must be an integer"),
    ("popuation = 4\n", "unknown option 'popuation'"),
    ("population = [4\n", "is not valid TOML"),
])
def test_bad_config_file(text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    _one_error(_in_process(["--config", str(path), "--out", str(tmp_path)], capsys), needle)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_error(_in_process(["--config", str(tmp_path / "none.toml")], capsys), "does not exist")


def test_config_file_is_read_and_flags_win(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           signals_restored: None) -> None:
    path = tmp_path / "run.toml"
    path.write_text(f'task = "{task_spec("TinyAdam")}"\npopulation = 6\nepochs = 4\nsessions = 2\n'
                    f'out = "{tmp_path / "from-toml"}"\nthreads = 1\n')
    result = _in_process(["--config", str(path), "-m", "4"], capsys)
    assert result.returncode == 0, result.stderr
    assert "S=6 members on 1 ranks" in result.stdout
    assert "session 4/4" in result.stdout and "session 5/" not in result.stdout
    assert (tmp_path / "from-toml" / "results.h5").exists()


@pytest.mark.both_mpis
def test_planted_exception_on_one_rank_ends_a_4_rank_job_fast(tmp_path: Path) -> None:
    """The other ranks do not wait: the job ends in the session that failed (a hang would run into the
    timeout). Not a timed bound: on a loaded machine four ranks' start-up alone can take most of a minute."""
    result = run_hsmpi(["--task", task_spec("PlantedFailure"), "-S", "4", "-M", "20", "-m", "10",
                        "--out", str(tmp_path)], ranks=4, timeout=150)
    assert result.returncode != 0
    assert "session 1/" not in result.stdout, "no session ended after rank 2 failed in the first"
    assert result.stderr.count("hsmpi: rank 2 of 4 failed") == 1, result.stderr
    assert "planted failure on rank 2" in result.stderr
    assert not (tmp_path / "results.h5").exists()


@pytest.mark.both_mpis
def test_help_and_version_print_once() -> None:
    result = run_hsmpi(["--help"], ranks=2, timeout=60)
    assert result.returncode == 0 and result.stdout.count("usage:") == 1
    assert "--members-per-rank" in result.stdout
    result = run_hsmpi(["--version"], ranks=2, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().startswith("hsmpi ")
    assert result.stdout.count("hsmpi ") == 1


@pytest.mark.both_mpis
def test_settings_and_session_lines_come_from_rank_0_only(tmp_path: Path) -> None:
    result = run_hsmpi(["--task", task_spec("TinyAdam"), *SMALL, "--out", str(tmp_path)], ranks=2, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("hsmpi 0.") == 1
    assert result.stdout.count("session 1/2") == 1 and result.stdout.count("session 2/2") == 1
    assert result.stdout.count("test loss: best member") == 1
    assert result.stdout.count("results: ") == 1


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    """`python -m hsmpi --help | head -3`: the reader goes away; no traceback, the shell's 141 (128 + SIGPIPE)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "hsmpi", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before hsmpi has even imported torch: its first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_a_run_with_no_finite_model_is_one_line_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           signals_restored: None) -> None:
    result = _in_process(["--task", task_spec("AllDiverge"), "-S", "2", "-M", "2", "-m", "2", "--threads", "1",
                          "--out", str(tmp_path)], capsys)
    assert result.returncode == 3, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("hsmpi: error:")]
    assert len(errors) == 1 and "no member ever had a finite validation loss in 2 sessions" in errors[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "results.h5").exists()
