"""`hsmpi.run`: the whole job as one call, from Python or from the command line.

`execute` reads top to bottom: check the output folder, find the checkpoint
to resume from, prepare the population, step 1 (sample and build the members)
or restore them, run the sessions with their observers, finish.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hsmpi import __version__
from hsmpi.algorithm.space import validate_space
from hsmpi.config import Config, ConfigError
from hsmpi.engine import population as populations
from hsmpi.engine.finish import Result, finish
from hsmpi.engine.observers import Checkpoints, LineageLog, SessionLine, StopRequests
from hsmpi.engine.resume import load_checkpoint, resume_options
from hsmpi.engine.search import Observer, Search, run_sessions
from hsmpi.errors import NoFiniteModel, SetupError, agree, ends_every_rank_on_failure, user_errors
from hsmpi.io import checkpoint, lineage, results
from hsmpi.io.files import DiskError, remove_litter
from hsmpi.parallel.comm import SerialComm, as_comm
from hsmpi.tasks import TaskError, load_task
from hsmpi.text import clean


class Stopped(Exception):
    """A stop signal arrived; the run stopped at a session boundary with a checkpoint written."""

    def __init__(self, signum: int, session: int, sessions: int, path: str, unit: str = "session") -> None:
        why = signal.Signals(signum).name if signum > 0 else "--stop-after"
        super().__init__(f"stopped by {why} after {unit} {session}/{sessions}; "
                         f"checkpoint {path}; continue with --resume auto --out {os.path.dirname(path) or '.'}")
        self.signum = signum


def run(task: Any = "regression1d", *, comm: Any = None, log: Callable[[str], None] | None = print,
        **options: Any) -> Result:
    """Run Hypersearch and return the best model, its hyperparameters and the history.

    `task` is a built-in name, `package.module:Class`, `path/to/file.py:Class`
    or a task object; `options` are `Config`'s fields (population, epochs,
    sessions, seed, sampler, select, out, device, members_per_rank, resume,
    ...); `comm` is an mpi4py communicator (default COMM_WORLD).  Call it on
    every rank.  Every rank writes its members' part of `<out>/results.h5` and
    of each checkpoint (`checkpoint_interval`); rank 0 the small rest.
    With `resume`, settings not given come from the checkpoint.  Raises
    NoFiniteModel (with the Result as `.result`) if no member ever had a
    finite validation loss.
    """
    comm = as_comm(comm)
    name = task if isinstance(task, str) else f"{type(task).__module__}:{type(task).__qualname__}"
    config = Config(**resume_options({"task": name, **options}, comm))
    if isinstance(task, str):
        task_obj = load_task(config.task)
    else:
        try:
            validate_space(getattr(task, "space", None))
        except ValueError as err:
            raise TaskError(f"task {config.task}: {err}") from None
        task_obj = task
    with ends_every_rank_on_failure(comm, (*user_errors(), Stopped, NoFiniteModel, DiskError),
                                    always_report=False):
        return execute(config, task_obj, comm, log or (lambda _: None))


def execute(config: Config, task: Any, comm: SerialComm, log: Callable[[str], None]) -> Result:
    """The job on one rank: setup (or resume), the sessions with their observers, the results."""
    start = time.perf_counter()
    log = _cleaned(log)
    agree(comm, _check_out(config.out) if comm.is_root else None)
    if comm.is_root:  # what writes killed midway left in the folder (never a complete checkpoint generation)
        removed = remove_litter(config.out)
        removed += checkpoint.prune(config.out) + results.prune_parts(config.out)
        if removed:
            log(f"removed {len(removed)} temporary file(s) and folder(s) that interrupted writes left in "
                f"{config.out}: {', '.join(removed)}")
    ckpt, schedule, path, error = None, None, "", None
    if config.resume and comm.is_root:
        try:
            ckpt, schedule, path = load_checkpoint(config, task, comm.size, log)
        except (checkpoint.CheckpointError, ConfigError) as err:
            error = str(err)
    agree(comm, error, checkpoint.CheckpointError)
    schedule = comm.bcast(schedule)
    startup = _torch_startup()
    search = Search.start(populations.prepare(config, task, comm, log), schedule)
    if schedule is not None:
        search.load_state_dict(ckpt, path)
    if comm.is_root:
        log(settings_line(search))
        if path:
            log(f"resumed from {path}: {search.next_session} of {len(search.schedule)} "
                f"{search.unit}s done")
        # The lineage log holds exactly the sessions the state holds (a run may have died after logging one).
        lineage.trim(config.out, search.next_session)
    if search.pending_selection and search.next_session < len(search.schedule):
        search.replan()
        if comm.is_root:
            lineage.trim(config.out, search.next_session - 1)
            lineage.append(config.out, search.history.lineage_record(search.next_session - 1, search.hparams))
    checkpoints = Checkpoints(config, intact=search.next_session if path else None)
    observers: list[Observer] = [LineageLog(config.out), StopRequests(config.stop_after), checkpoints,
                                 SessionLine(log, start, search.next_session)]
    stopped = run_sessions(search, observers)
    if stopped is not None:
        raise Stopped(stopped.stop, stopped.k + 1, len(search.schedule), stopped.path, search.unit)
    result = finish(search, checkpoints, log, start, startup)
    if not result.finite_model:
        error_line = (f"no member ever had a finite validation loss in {len(search.schedule)} sessions, so "
                      f"there is no model to return; the results file {result.path or config.out} holds "
                      "the history (marked finite_model = false)")
        raise NoFiniteModel(error_line, result)
    return result


def _check_out(folder: str) -> str | None:
    """Rank 0: can the results be written there?  Asked before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write to the output folder {folder!r}: {err.strerror or err}"
    return None


def _torch_startup() -> float:
    """PyTorch's one-time start-up, paid by any PyTorch program at its first optimizer (it imports
    torch._dynamo): done here, before the members, so the run summary can name it apart from hsmpi's own."""
    start = time.perf_counter()
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:
        pass
    return time.perf_counter() - start


def _cleaned(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` with every line made safe to show (see hsmpi.io.text)."""
    return lambda line: log(clean(line, lines=True))


def settings_line(search: Search) -> str:
    """Rank 0's first line: what runs where, with which settings."""
    pop, comm = search.population, search.comm
    c = pop.config
    sizes = sorted({len(b) for b in pop.blocks})
    per_rank = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    sampler = ", ".join(f"{k}={v}" for k, v in search.sampler.describe().items() if k != "name")
    selection = ", ".join(f"{k}={v}" for k, v in search.selection.describe().items() if k != "name")
    library = " ".join(comm.library().split())
    # the sessions (a session with a rung is two steps: its rung's epochs and the rest)
    epochs = [e + (search.schedule[k - 1] if k and search.rungs[k - 1] else 0)
              for k, e in enumerate(search.schedule) if not search.rungs[k]]
    lengths = f" ({'+'.join(map(str, epochs))})" if len(set(epochs)) > 2 else ""  # not near-equal: say how
    rungs = (f" | a rung at {c.prune_at:g} of each session restarts the worst {100 * c.prune_fraction:g}% of "
             f"the members ({len(epochs) + sum(search.rungs)} steps)" if any(search.rungs) else "")
    if c.plateau is not None:
        rungs += f" | a session ends early once its best improves by less than {100 * c.plateau:g}% in an epoch"
    return (f"hsmpi {__version__} | task {c.task} | S={pop.size} members on {comm.size} ranks "
            f"({per_rank} per rank) | M={sum(epochs)} epochs in m={len(epochs)} sessions{lengths}{rungs} | "
            f"sampler {c.sampler}({sampler}) | select {c.select}{f'({selection})' if selection else ''} | "
            f"seed {c.seed} | init {'independent' if c.independent_init else 'shared'} | device {pop.device}"
            f"{f' (kernels {pop.kernels})' if pop.device.type == 'cpu' else ''} | "
            f"threads {pop.threads} | MPI {library}")


__all__ = ["run", "execute", "Result", "ConfigError", "SetupError", "TaskError", "Stopped", "NoFiniteModel"]
