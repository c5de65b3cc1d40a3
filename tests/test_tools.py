"""The lineage log, the exported state dicts, `doctor`, `replay`, and environment.yml against setup.cfg."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import pytest
import torch
import yaml  # type: ignore[import-untyped]

import hsmpi
from hsmpi.cli import main
from hsmpi.cli.replay import replay
from hsmpi.engine.device import cpu_kernels
from hsmpi.engine.job import Stopped
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import load_task

from conftest import ROOT, mpirun_cmd, run_hsmpi
from tasks_for_tests import TinyAdam


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after session 2, resumed and extended from 3 sessions to 4 (in one process)."""
    out = tmp_path_factory.mktemp("tools")
    options = dict(select="winner", population=4, epochs=6, sessions=3, threads=1, out=str(out), log=None)
    with pytest.raises(Stopped):
        hsmpi.run("regression1d", comm=SerialComm(), stop_after=2, **options)
    hsmpi.run("regression1d", comm=SerialComm(), resume="auto", **{**options, "sessions": 4, "epochs": 8})
    return out


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> SimpleNamespace:
    """`python -m hsmpi ARGS` in this process (one rank)."""
    code = main(args)
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_lineage_log_has_one_line_per_session_through_stop_resume_and_extension(run: Path) -> None:
    lines = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    assert [d["session"] for d in lines] == [1, 2, 3, 4]
    with h5py.File(run / "results.h5", "r") as f:
        winners = f["history/winner"][()].tolist()
        val = f["history/val_loss"][()]
    assert [d["winner"] for d in lines] == winners
    for k, d in enumerate(lines):
        assert [m["member"] for m in d["members"]] == [0, 1, 2, 3]
        assert d["members"][0]["val_loss"] == pytest.approx(val[k][0])
        copied = [m for m in d["members"] if "copied_from" in m]
        if k < 3:  # sessions 1-3 were followed by a selection step (3 by the extension's re-plan)
            assert len(copied) == 3 and all(m["copied_from"] == d["winner"] for m in copied)
            assert all(set(m["new_hparams"]) == {"lr", "beta1", "weight_decay"} for m in copied)
        else:
            assert copied == []


def test_exported_state_dicts_load_into_the_task_model(run: Path) -> None:
    task = load_task("regression1d")
    description = json.loads((run / "top.json").read_text())
    assert [t["file"] for t in description["top"]] == ["top1.pt", "top2.pt", "top3.pt"]
    vals = [t["val_loss"] for t in description["top"]]
    assert vals == sorted(vals)
    x, y = task.data(0)[2].tensors
    model = task.model()
    model.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    with torch.no_grad():
        loss = torch.nn.functional.mse_loss(model(x), y).item()
    with h5py.File(run / "results.h5", "r") as f:
        assert loss == pytest.approx(float(f["test/best_loss"][()]), rel=1e-5)


def test_doctor_reports_every_rank_once() -> None:
    result = run_hsmpi(["doctor"], ranks=2, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\nMPI: ") == 1 and "2 ranks on 1 node(s)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| [01] \|", line)]
    assert len(rows) == 2 and "| 0 of 2 |" in rows[0] and "| 1 of 2 |" in rows[1]
    assert "HDF5 file locking" in result.stdout
    assert all(row.endswith(f"| {cpu_kernels()} |") for row in rows)
    assert "different vector kernels" not in result.stdout


def _rank_1_pins_its_kernels(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m hsmpi args` on 2 ranks, rank 1 with PyTorch's kernels pinned to the plainest level (its
    floats can round otherwise than rank 0's)."""
    script = ('r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}}; '
              'if [ "$r" = 1 ]; then export ATEN_CPU_CAPABILITY=default; fi; exec "$0" -m hsmpi "$@"')
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*mpirun_cmd(2), "bash", "-c", script, sys.executable, *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_doctor_warns_when_the_ranks_run_different_cpu_kernels() -> None:
    """doctor names both ranks' kernels and says how to make them agree."""
    result = _rank_1_pins_its_kernels(["doctor"])
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| [01] \|", line)]
    assert "ATEN_CPU_CAPABILITY" not in rows[0] and rows[1].endswith("| DEFAULT, ATEN_CPU_CAPABILITY=default |")
    warning = [line for line in result.stdout.splitlines() if "different vector kernels" in line]
    assert len(warning) == 1 and "MKL_CBWR" in warning[0]


def test_a_run_on_ranks_with_different_cpu_kernels_says_so_once_and_records_them(tmp_path: Path) -> None:
    result = _rank_1_pins_its_kernels(["-S", "2", "-M", "2", "-m", "1", "--threads", "1", "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stdout.splitlines() if "different vector kernels" in line]
    assert len(warning) == 1 and "depend on which members land on which rank" in warning[0]
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f.attrs["cpu_kernels"] == (f"{cpu_kernels()} on 1 rank(s) from rank 0; "
                                          "DEFAULT, ATEN_CPU_CAPABILITY=default on 1 rank(s) from rank 1")


@pytest.mark.parametrize("vectorize", ["auto", "off"])
def test_replay_of_a_one_session_run_is_the_search_itself(tmp_path: Path, vectorize: str) -> None:
    """On the path the run took: `auto` batched these MLPs on the CPU (dropout masks of the batched path),
    `off` trained them one at a time."""
    hsmpi.run(TinyAdam(), comm=SerialComm(), log=None, population=3, epochs=3, sessions=1, threads=1,
              out=str(tmp_path), vectorize=vectorize)
    lines: list[str] = []
    loss = replay(str(tmp_path / "results.h5"), log=lines.append)
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert loss == float(f["test/best_loss"][()])
    assert lines[-1].startswith("replayed network: test loss")


def test_replay_cli(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _cli(["replay", str(run / "results.h5")], capsys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("session ") == 4 and "replayed network: test loss" in result.stdout
    bad = _cli(["replay", str(run / "nope.h5")], capsys)
    assert bad.returncode == 2 and "hsmpi: error: cannot replay" in bad.stderr


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip()}


def test_environment_yml_matches_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    needed = _names(cfg["options"]["install_requires"].splitlines())
    needed |= _names(cfg["options.extras_require"]["tasks"].splitlines())
    needed |= _names(cfg["options.extras_require"]["test"].splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {d.split("=")[0].lower() for d in env["dependencies"] if isinstance(d, str)}
    conda_names = {"torch": "pytorch"}  # conda-forge's name for the same package
    missing = {n for n in needed if conda_names.get(n, n) not in conda}
    assert not missing, f"environment.yml lacks {sorted(missing)}"
    assert {"mpich", "mpi4py", "python"} <= conda or {"openmpi", "mpi4py", "python"} <= conda
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert pip and "-e ." in pip[0]["pip"], "environment.yml installs the package itself"


def test_report_of_results_and_of_a_checkpoint_in_progress(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    done = _cli(["report", str(run / "results.h5"), "--out", str(tmp_path / "a")], capsys)
    assert done.returncode == 0, done.stderr
    assert "test loss: best member" in done.stdout and done.stdout.count("\n| ") >= 5
    # regression1d's 256 validation samples: the defaults' `auto` returns the greedy ensemble
    assert ", greedy ensemble " in done.stdout and "(the run returned the greedy ensemble)" in done.stdout
    assert (tmp_path / "a" / "summary.md").exists()
    assert (tmp_path / "a" / "losses.png").stat().st_size > 10_000
    assert (tmp_path / "a" / "hparams.png").stat().st_size > 10_000
    running = _cli(["report", str(run / "checkpoint.h5"), "--out", str(tmp_path / "b")], capsys)
    assert running.returncode == 0, running.stderr
    assert "checkpoint (run in progress)" in running.stdout
    bad = _cli(["report", str(tmp_path / "none.h5")], capsys)
    assert bad.returncode == 2 and "hsmpi: error: cannot read" in bad.stderr
    (tmp_path / "early").mkdir()
    early = _cli(["report", str(tmp_path / "early")], capsys)
    assert early.returncode == 2 and "no results.h5 and no checkpoint in" in early.stderr, early.stderr
    assert early.stderr.count("hsmpi: error:") == 1
    plotted = _cli(["plot", str(run), "--out", str(tmp_path / "c")], capsys)
    assert plotted.returncode == 0, plotted.stderr
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"summary.md", "losses.png", "hparams.png"}


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    quiet = run_hsmpi(["-S", "2", "-M", "2", "-m", "1", "--progress", "--threads", "1", "--out", str(tmp_path / "q")],
                      ranks=1)
    assert quiet.returncode == 0 and "member-epochs" not in quiet.stderr + quiet.stdout
    import pty

    master, slave = pty.openpty()  # the job's stderr is a terminal
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "hsmpi", "-S", "2", "-M", "2", "-m", "1", "--progress", "--out", str(tmp_path / "t")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=90) == 0
    text = seen.decode(errors="replace")
    assert "session 1/1 [" in text and "4/4 member-epochs on rank 0" in text


def test_lineage_trim_drops_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    from hsmpi.io import lineage

    path = tmp_path / lineage.NAME
    path.write_text('{"session": 1}\n{"session": 2}\n{"session": 3, "memb')
    lineage.trim(str(tmp_path), 2)
    assert [json.loads(line)["session"] for line in path.read_text().splitlines()] == [1, 2]
