"""`hsmpi.run`: the whole job as one call, from Python or from the command line."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .comm import SerialComm, as_comm
from .config import Config, ConfigError
from .results import write_results
from .session import Result, Search, SetupError, finish
from .space import describe_space, validate_space
from .tasks import TaskError, load_task


def run(task: Any = "regression1d", *, comm: Any = None, log: Callable[[str], None] | None = print,
        **options: Any) -> Result:
    """Run Hypersearch and return the best model, its hyperparameters and the history.

    `task` is a built-in name, `package.module:Class`, `path/to/file.py:Class`
    or a task object; `options` are `Config`'s fields (population, epochs,
    sessions, seed, sampler, select, out, device, members_per_rank, ...);
    `comm` is an mpi4py communicator (default COMM_WORLD).  Call it on every
    rank.  Rank 0 writes `<out>/results.h5`.
    """
    comm = as_comm(comm)
    if isinstance(task, str):
        config = Config(task=task, **options)
        task_obj = load_task(task)
    else:
        config = Config(task=f"{type(task).__module__}:{type(task).__qualname__}", **options)
        try:
            validate_space(getattr(task, "space", None))
        except ValueError as err:
            raise TaskError(f"task {config.task}: {err}") from None
        task_obj = task
    return execute(config, task_obj, comm, log or (lambda _: None))


def _check_out(folder: str) -> str | None:
    """Rank 0: can the results be written there?  Asked before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write to the output folder {folder!r}: {err.strerror or err}"
    return None


def execute(config: Config, task: Any, comm: SerialComm, log: Callable[[str], None]) -> Result:
    """The job on one rank: setup, m sessions, finish, results file (rank 0)."""
    start = time.perf_counter()
    error = _check_out(config.out) if comm.is_root else None
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise SetupError(errors[0])
    search = Search(config, task, comm, log)
    search.setup()
    if comm.is_root:
        log(_settings_line(search))
    for k in range(config.sessions):
        search.run_session(k)
    result, record = finish(search)
    if comm.is_root:
        path = os.path.join(config.out, "results.h5")
        meta = {"hsmpi_version": __version__, "population": search.population, "ranks": comm.size,
                "threads": search.threads, "device_type": search.device.type, "mpi": comm.library(),
                "wall_seconds": time.perf_counter() - start}
        write_results(path, meta, config.to_dict(), describe_space(search.space), **record)
        result.path = path
        log(f"test loss: best member {result.test_loss:.5g} (member {result.best_member}, "
            f"session {result.best_session + 1}) | population average {result.ensemble_test_loss:.5g} "
            f"({record['test']['ensemble_members']} members)")
        log(f"results: {path} ({time.perf_counter() - start:.1f}s in all)")
    return result


def _settings_line(search: Search) -> str:
    c, comm = search.config, search.comm
    per = {len(b) for b in search.blocks}
    per_rank = str(per.pop()) if len(per) == 1 else f"{min(len(b) for b in search.blocks)}-{max(per)}"
    sampler = ", ".join(f"{k}={v}" for k, v in search.sampler.describe().items() if k != "name")
    selection = ", ".join(f"{k}={v}" for k, v in search.selection.describe().items() if k != "name")
    return (f"hsmpi {__version__} | task {c.task} | S={search.population} members on {comm.size} ranks "
            f"({per_rank} per rank) | M={c.epochs} epochs in m={c.sessions} sessions | "
            f"sampler {c.sampler}({sampler}) | select {c.select}({selection}) | seed {c.seed} | "
            f"init {'independent' if c.independent_init else 'shared'} | device {search.device} | "
            f"threads {search.threads} | MPI {comm.library()}")


__all__ = ["run", "execute", "Result", "ConfigError", "SetupError", "TaskError"]
