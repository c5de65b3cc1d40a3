"""Shared helpers: run hsmpi under a real mpirun, inside a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = HERE / "tasks_for_tests.py"


def mpirun() -> str:
    """The mpirun beside this Python (the venv's mpich wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpirun on this machine")
    return found


def run_hsmpi(args: list[str], ranks: int = 1, timeout: float = 120, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mpirun -n ranks python -m hsmpi args`, output captured, killed after `timeout` seconds."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    cmd = [mpirun(), "-n", str(ranks), sys.executable, "-m", "hsmpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=full_env)


def task_spec(name: str) -> str:
    return f"{TASKS}:{name}"
