"""The performance scripts still run and print their tables (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT, mpirun_cmd


def _script(args: list[str], ranks: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*mpirun_cmd(ranks), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_benchmark_overhead_prints_both_tables() -> None:
    result = _script(["scripts/benchmark_overhead.py", "--max-params", "1e4", "--tasks", "regression1d",
                      "--per-rank", "1", "-M", "2", "-m", "2", "--repeats", "2"], ranks=2)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sweep = [line for line in lines if line.startswith("| 1e+0")]
    assert [line.split("|")[1].strip() for line in sweep] == ["1e+03", "1e+04"]
    e2e = [line for line in lines if line.startswith("| regression1d |")]
    assert len(e2e) == 1
    cells = [c.strip() for c in e2e[0].split("|")[1:-1]]
    assert cells[1:4] == ["2", "1", "2"]  # M, K per rank, S
    assert float(cells[6]) > 0  # a ratio was measured


def test_benchmark_returns_times_both_rules_on_every_seed() -> None:
    result = _script(["scripts/benchmark_returns.py", "--tasks", "regression1d", "-S", "4", "-M", "2", "-m", "1",
                      "--seeds", "0", "1"], ranks=2)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| regression1d |")]
    assert len(rows) == 1, result.stdout
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1] == "2" and float(cells[2]) > 0 and float(cells[3]) > 0  # two seeds, each rule timed


def test_benchmark_throughput_runs_both_paths() -> None:
    result = _script(["scripts/benchmark_throughput.py", "--members", "2", "--epochs", "1"], ranks=1)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1 and "x" in rows[0], result.stdout


def test_breakdown_run_under_mpirun_has_a_column_per_rank() -> None:
    result = _script(["scripts/breakdown_run.py", "-M", "2", "-m", "2", "--repeats", "1"], ranks=2)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "| part | rank 0 (ms per run) | rank 1 (ms per run) |" in lines, result.stdout
    rows = {c[1].strip().strip("*"): [x.strip().strip("*") for x in c[2:-1]] for c in
            (line.split("|") for line in lines if line.startswith("| ") and "---" not in line)}
    assert float(rows["results file"][0]) > 0 and float(rows["results file"][1]) == 0, "rank 0 writes the results"
    whole = [float(x) for x in rows["whole hsmpi.run"]]
    assert whole[0] == whole[1] > 0  # until the last rank is done: the same on both
    assert float(rows["training (every session)"][0]) > 0 and float(rows["validation (every session)"][0]) > 0
    # The named parts are disjoint, so what is left over can only be positive (a little rounding aside).
    assert all(float(x) > -0.5 for x in rows["everything else (logging, small collectives, bookkeeping)"])
