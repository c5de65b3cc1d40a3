"""Shared helpers: run hsmpi under a real mpirun, inside a timeout."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = HERE / "tasks_for_tests.py"
if str(ROOT) not in sys.path:  # the checkout's benchmarks/ package, whatever folder pytest started in
    sys.path.insert(0, str(ROOT))


# Where launchers put a rank's number in its environment: MPICH's hydra, Open MPI, any PMIx launcher.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def mpirun() -> str:
    """The mpirun beside this Python (the venv's MPI wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpirun on this machine")
    return found


@functools.cache
def _launcher(path: str) -> tuple[str, ...]:
    """`path` with the options its MPI needs here: Open MPI refuses root without --allow-run-as-root and
    more ranks than cores without --oversubscribe; MPICH needs neither."""
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    if "Open MPI" not in version and "OpenRTE" not in version:
        return (path,)
    return (path, "--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else []))


def launcher() -> list[str]:
    """This venv's mpirun with the options its MPI needs here."""
    return list(_launcher(mpirun()))


def mpirun_cmd(ranks: int) -> list[str]:
    """The start of a command line that launches `ranks` processes with this venv's MPI."""
    return [*launcher(), "-n", str(ranks)]


def rank_in_environ(environ: list[bytes]) -> int | None:
    """A process's MPI rank, from its /proc environ entries (None if it is not an MPI rank)."""
    for entry in environ:
        name, _, value = entry.partition(b"=")
        if name.decode(errors="replace") in RANK_VARIABLES and value.isdigit():
            return int(value)
    return None


def rank_pid(out: Path, rank: int, timeout: float = 60) -> int:
    """The pid of one hsmpi rank of the job writing to `out` (found by its command line and the rank its
    launcher put in its environment, whichever MPI that is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[0] == sys.executable.encode() and str(out).encode() in cmd \
                    and rank_in_environ(env) == rank:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} of the job in {out} was not found")


def run_hsmpi(args: list[str], ranks: int = 1, timeout: float = 120, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mpirun -n ranks python -m hsmpi args`, output captured, killed after `timeout` seconds."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    rank_cmd = [sys.executable, "-m", "hsmpi", *args]
    try:
        return subprocess.run([*mpirun_cmd(ranks), *rank_cmd], capture_output=True, text=True, timeout=timeout,
                              cwd=cwd or ROOT, env=full_env)
    finally:
        _no_rank_left(rank_cmd)


def _no_rank_left(rank_cmd: list[str], grace: float = 10.0) -> None:
    """Fail (and kill them) if ranks of this exact command line outlive their mpirun by `grace` seconds:
    an orphaned rank spins on a core, and every test after it slows down or times out."""
    wanted = [a.encode() for a in rank_cmd]
    deadline = time.monotonic() + grace
    while True:
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == wanted:
                    left.append(int(pid))
            except OSError:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"{len(left)} rank(s) of `{' '.join(rank_cmd)}` outlived mpirun by {grace:.0f} s (killed)"


def task_spec(name: str) -> str:
    return f"{TASKS}:{name}"

