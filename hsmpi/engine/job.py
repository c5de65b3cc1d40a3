"""`hsmpi.run`: the whole job as one call, from Python or from the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from hsmpi import __version__
from hsmpi.algorithm.space import describe_space, validate_space
from hsmpi.config import Config, ConfigError, resolve_population, session_epochs
from hsmpi.engine import signals
from hsmpi.engine.finish import Result, finish
from hsmpi.engine.session import Search, SetupError, agree
from hsmpi.engine.state import collect, restore
from hsmpi.io import checkpoint, lineage
from hsmpi.io.export import export_top
from hsmpi.io.results import write_results
from hsmpi.io.text import clean, say
from hsmpi.parallel.comm import SerialComm, as_comm
from hsmpi.tasks import TaskError, load_task

# Settings a resumed run must share with its checkpoint (the rest may change, e.g. -m and -M to extend it).
MUST_MATCH = ("task", "population", "seed")


class Stopped(Exception):
    """A stop signal arrived; the run stopped at a session boundary with a checkpoint written."""

    def __init__(self, signum: int, session: int, sessions: int, path: str) -> None:
        why = signal.Signals(signum).name if signum > 0 else "--stop-after"
        super().__init__(f"stopped by {why} after session {session}/{sessions}; "
                         f"checkpoint {path}; continue with --resume auto --out {os.path.dirname(path) or '.'}")
        self.signum = signum


def run(task: Any = "regression1d", *, comm: Any = None, log: Callable[[str], None] | None = print,
        **options: Any) -> Result:
    """Run Hypersearch and return the best model, its hyperparameters and the history.

    `task` is a built-in name, `package.module:Class`, `path/to/file.py:Class`
    or a task object; `options` are `Config`'s fields (population, epochs,
    sessions, seed, sampler, select, out, device, members_per_rank, resume,
    ...); `comm` is an mpi4py communicator (default COMM_WORLD).  Call it on
    every rank.  Rank 0 writes `<out>/results.h5` and checkpoints
    (`checkpoint_interval`; the last one another rank on its node, if any).
    With `resume`, settings not given come from the checkpoint.
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
    try:
        return execute(config, task_obj, comm, log or (lambda _: None))
    except (SetupError, ConfigError, TaskError, checkpoint.CheckpointError, Stopped):
        raise  # raised on every rank alike
    except BaseException as err:
        if comm.size > 1:  # the other ranks would wait forever in their next collective
            say(f"hsmpi: rank {comm.rank} of {comm.size} failed: {type(err).__name__}: {err}", sys.stderr)
            traceback.print_exc(file=sys.stderr)
            comm.abort(1)
        raise


def resume_options(options: dict[str, Any], comm: SerialComm) -> dict[str, Any]:
    """With `resume`, the checkpoint's settings under the ones given explicitly (collective)."""
    resume = options.get("resume")
    if not resume:
        return options
    saved, error = None, None
    if comm.is_root:
        try:
            where = checkpoint.locate(resume, options.get("out", Config.out))
            if where is not None:
                attrs, _ = checkpoint.load(where, warn=lambda s: None, attrs_only=True)  # warned once, later
                saved = json.loads(attrs["config"])
        except (checkpoint.CheckpointError, KeyError, ValueError) as err:
            error = str(err)
    saved, error = comm.bcast((saved, error))
    if error:
        raise checkpoint.CheckpointError(error)
    if saved is None:
        return options
    for key in MUST_MATCH:
        if key in options and options[key] is not None and saved.get(key) != options[key]:
            raise checkpoint.CheckpointError(
                f"the checkpoint was made with {key} = {saved.get(key)!r}, but this run asks for "
                f"{options[key]!r}; resume with the same {key} or start a new run in another --out folder")
    known = set(Config.field_names())
    inherited = {k: v for k, v in saved.items() if k in known and k not in ("resume", "stop_after")}
    return {**inherited, **options}


def _check_out(folder: str) -> str | None:
    """Rank 0: can the results be written there?  Asked before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write to the output folder {folder!r}: {err.strerror or err}"
    return None


def _load_checkpoint(config: Config, task: Any, size: int, log: Callable[[str], None]
                     ) -> tuple[dict[str, Any] | None, list[int] | None, str]:
    """Rank 0: the checkpoint to resume from (or None) and the session schedule to follow."""
    assert config.resume is not None
    where = checkpoint.locate(config.resume, config.out)
    if where is None:
        log(f"no checkpoint in {config.out}: starting a new run")
        return None, None, ""
    ckpt, path = checkpoint.load(where, warn=lambda s: say(s, sys.stderr))
    population = resolve_population(config, size)
    if ckpt["task"] != config.task:
        raise checkpoint.CheckpointError(f"{path} was made for task {ckpt['task']!r}, not {config.task!r}")
    if int(ckpt["population"]) != population:
        raise checkpoint.CheckpointError(f"{path} holds {ckpt['population']} members, but this run has "
                                         f"S = {population}")
    if json.loads(ckpt["space"]) != describe_space(task.space):
        raise checkpoint.CheckpointError(f"{path} was made with the space {ckpt['space']}, but the task's "
                                         f"space is now {json.dumps(describe_space(task.space))}")
    try:
        saved = json.loads(ckpt["config"])
        done = int(ckpt["next_session"])
        past = json.loads(ckpt["history"]["json"])["epochs"]
        pending = bool(ckpt["pending_selection"])
    except (KeyError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path} lacks {err} (made by another hsmpi version?)") from None
    if config.sessions == done and not pending:
        raise checkpoint.CheckpointError(
            f"{path} has {done} sessions done and its last one already copied the winner: -m must be more "
            f"than {done} (or resume with the original -m {saved['sessions']})")
    if config.sessions == done and config.epochs != sum(past):
        raise checkpoint.CheckpointError(f"{path} has all {done} sessions done: -M {config.epochs} would add "
                                         f"no epochs without more sessions; raise -m too")
    if (saved["epochs"], saved["sessions"]) == (config.epochs, config.sessions):
        schedule = session_epochs(config.epochs, config.sessions)
    elif config.sessions < done or config.epochs - sum(past) < config.sessions - done:
        raise checkpoint.CheckpointError(
            f"{path} has {done} sessions ({sum(past)} epochs) done: -m must be at least {done} and "
            f"-M at least {sum(past)} + one epoch per further session")
    else:
        rest = config.sessions - done
        schedule = past + (session_epochs(config.epochs - sum(past), rest) if rest else [])
    return ckpt, schedule, path


def execute(config: Config, task: Any, comm: SerialComm, log: Callable[[str], None]) -> Result:
    """The job on one rank: setup (or resume), the sessions with a checkpoint after each, results."""
    start = time.perf_counter()
    log = _cleaned(log)
    agree(comm, _check_out(config.out) if comm.is_root else None)
    ckpt, schedule, path, error = None, None, "", None
    if config.resume and comm.is_root:
        try:
            ckpt, schedule, path = _load_checkpoint(config, task, comm.size, log)
        except (checkpoint.CheckpointError, ConfigError) as err:
            error = str(err)
    agree(comm, error)
    schedule = comm.bcast(schedule)
    search = Search(config, task, comm, log)
    if schedule is not None:
        search.schedule = schedule
    search.setup()
    if schedule is not None:
        restore(search, ckpt)
    if comm.is_root:
        log(_settings_line(search))
        if path:
            log(f"resumed from {path}: {search.next_session} of {len(search.schedule)} sessions done")
        # The lineage log holds exactly the sessions the state holds (a run may have died after logging one).
        lineage.trim(config.out, search.next_session)
    if search.pending_selection and search.next_session < len(search.schedule):
        _replan(search)
        if comm.is_root:
            lineage.trim(config.out, search.next_session - 1)
            lineage.append(config.out, lineage.record(search, search.next_session - 1))
    saver = _Saver(config)
    for k in range(search.next_session, len(search.schedule)):
        value, winner, note, times = search.run_session(k)
        if comm.is_root:
            lineage.append(config.out, lineage.record(search, k))
        last = k == len(search.schedule) - 1
        signum = 0
        if not last:
            # A signal on any rank stops every rank here, at the same boundary.
            signum = int(comm.allreduce_max(float(signals.requested())))
            if not signum and config.stop_after is not None and k + 1 >= config.stop_after:
                signum = -1
        # Rank 0's clock decides; every rank must agree, since collecting the state is collective.
        write = bool(comm.bcast(last or signum != 0 or saver.due() if comm.is_root else None))
        search.record_times(times)  # before the checkpoint, so that it holds this session's times too
        if write:
            times[5] = saver.save(search, k, hand_off=last)
            if comm.is_root:  # the checkpoint column is rank 0's writing time, known only now
                search.history.time[-1][0, 5] = times[5]
        search.log_session(k, value, winner, note, times, time.perf_counter() - start, write)
        if signum:
            raise Stopped(signum, k + 1, len(search.schedule), saver.path)
    return _finish(search, comm, config, log, start, saver)


def _cleaned(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` with every line made safe to show (see hsmpi.text)."""
    return lambda line: log(clean(line, lines=True))


class _Saver:
    """Writes checkpoints (collective) and, on rank 0, knows when the next one is due."""

    # The last checkpoint of a run goes to comm.io_helper to write while rank 0 writes the results file.
    # Not for states over this: the send pickles a copy (memory), and a large file's time is its data.
    HAND_OFF_MAX_BYTES = 64 * 2**20

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = os.path.join(config.out, checkpoint.LATEST)
        self.since = time.perf_counter()  # the last checkpoint, or the start of training
        self.cost: float | None = None  # what the last one took
        self.handed: tuple[dict[str, Any] | None, int] | None = None  # every rank: (rank 0's state, session)
        self.error = ""  # the helper's, when writing a handed-off checkpoint failed

    def due(self) -> bool:
        return checkpoint.due(self.config.checkpoint_seconds(), time.perf_counter() - self.since, self.cost)

    def save(self, search: Search, k: int, hand_off: bool = False) -> float:
        """Write the state after session k; return the seconds it took (rank 0's, from the gather on).

        `hand_off` (the run's last checkpoint): leave the writing to comm.io_helper, done in
        `write_handed` while rank 0 writes the results file (about half a run's fixed cost is files).
        """
        t = time.perf_counter()
        comm = search.comm
        state = collect(search, k)
        if comm.is_root:
            assert state is not None
            lineage.sync(self.config.out)
        if hand_off and comm.io_helper != 0 and comm.bcast(
                _array_bytes(state) <= self.HAND_OFF_MAX_BYTES if comm.is_root else None):
            self.handed = (state, k)
        elif comm.is_root:
            assert state is not None
            self.path = checkpoint.save(self.config.out, state, k, self.config.keep_checkpoints)
        self.since = time.perf_counter()
        self.cost = self.since - t
        return self.cost

    def write_handed(self, comm: SerialComm, exports: tuple[dict[str, Any], int] | None = None) -> bool:
        """Rank 0 sends the handed-off state; comm.io_helper writes it (a failure is kept, see `confirm`).

        `exports` (rank 0: the results record and how many top members to export): the helper writes
        best.pt and the top-K files too, when they are small.  Returns whether it does.
        """
        if self.handed is None:
            return False
        if comm.is_root:
            state, k = self.handed
            part = None
            if exports is not None:
                record, top = exports
                part = {"best": record["best"], "population": record["population"]}
                if _array_bytes(part) > self.HAND_OFF_MAX_BYTES:
                    part = None
            comm.send((state, k, None if part is None else (part, top)), dest=comm.io_helper)
            self.handed = (None, k)  # the helper holds the state now
            return part is not None
        if comm.rank == comm.io_helper:
            state, k, exports = comm.recv(source=0)
            try:
                self.path = checkpoint.save(self.config.out, state, k, self.config.keep_checkpoints)
            except OSError as err:
                self.error = (f"the final checkpoint could not be written ({_why(err, self.config.out)}), so the "
                              f"run cannot be extended with --resume")
            if exports is not None:
                try:
                    export_top(self.config.out, *exports)
                except OSError as err:
                    self.error += ("; " if self.error else "") + \
                        f"best.pt and the top-K files could not be written ({_why(err, self.config.out)})"
        return False

    def confirm(self, comm: SerialComm, results: str) -> None:
        """After the results file: the helper tells rank 0 how writing went; both raise if it failed."""
        if self.handed is None:
            return
        if comm.rank == comm.io_helper:
            comm.send(self.error, dest=0)
        elif comm.is_root:
            self.error = comm.recv(source=comm.io_helper)
        if self.error:
            raise checkpoint.CheckpointError(f"{self.error}; the results are complete in {results}")


def _why(err: OSError, folder: str) -> str:
    return f"{err.strerror or err}: {getattr(err, 'filename', None) or folder}"


def _array_bytes(state: Any) -> int:
    """Bytes of the numpy arrays in a nested dict."""
    if isinstance(state, dict):
        return sum(_array_bytes(v) for v in state.values())
    return int(state.nbytes) if isinstance(state, np.ndarray) else 0


def _replan(search: Search) -> None:
    """A finished run extended on resume: its last session gets the selection step it skipped."""
    comm, k = search.comm, search.next_session - 1
    rows = comm.bcast((search.history.train_loss[-1], search.history.val_loss[-1]) if comm.is_root else None)
    train = [float(rows[0][m.index]) for m in search.members]
    val = [float(rows[1][m.index]) for m in search.members]
    _, _, _, times = search.select_and_share(k, train, val, np.zeros(6), replan=True)
    search.record_times(times, replan=True)


def _finish(search: Search, comm: SerialComm, config: Config, log: Callable[[str], None], start: float,
            saver: _Saver) -> Result:
    result, record = finish(search)
    top = min(config.export_top, search.population)
    exported = saver.write_handed(comm, (record, top) if comm.is_root else None)
    path = os.path.join(config.out, "results.h5")
    if comm.is_root:
        meta = {"hsmpi_version": __version__, "population": search.population, "ranks": comm.size,
                "threads": search.threads, "device_type": search.device.type, "mpi": comm.library(),
                "wall_seconds": time.perf_counter() - start}
        settings = dataclasses.replace(config, population=search.population).to_dict()
        write_results(path, meta, settings, describe_space(search.space), **record)
        result.path = path
        if not exported:
            export_top(config.out, record, top)
    saver.confirm(comm, path)
    if comm.is_root:
        log(f"test loss: best member {result.test_loss:.5g} (member {result.best_member}, "
            f"session {result.best_session + 1}) | population average {result.ensemble_test_loss:.5g} "
            f"({record['test']['ensemble_members']} members)")
        log(_time_summary(record["history"]["time"], time.perf_counter() - start))
        log(f"results: {path} ({time.perf_counter() - start:.1f}s in all)")
    return result


def _time_summary(times: dict[str, np.ndarray], wall: float) -> str:
    """Rank 0's share of the wall time per phase, and what was neither training nor validation."""
    spent = {phase: float(np.nansum(values[:, 0])) for phase, values in times.items()}
    other = wall - sum(spent.values())
    work = spent["train"] + spent["val"]
    parts = ", ".join(f"{p} {spent[p] / wall:.1%}" for p in ("select", "scatter", "bcast", "checkpoint"))
    return (f"time (rank 0): training and validation {work / wall:.1%} | not {1 - work / wall:.1%}: {parts}, "
            f"setup and finish {other / wall:.1%}")


def _settings_line(search: Search) -> str:
    c, comm = search.config, search.comm
    sizes = sorted({len(b) for b in search.blocks})
    per_rank = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    sampler = ", ".join(f"{k}={v}" for k, v in search.sampler.describe().items() if k != "name")
    selection = ", ".join(f"{k}={v}" for k, v in search.selection.describe().items() if k != "name")
    library = " ".join(comm.library().split())
    return (f"hsmpi {__version__} | task {c.task} | S={search.population} members on {comm.size} ranks "
            f"({per_rank} per rank) | M={sum(search.schedule)} epochs in m={len(search.schedule)} sessions | "
            f"sampler {c.sampler}({sampler}) | select {c.select}{f'({selection})' if selection else ''} | "
            f"seed {c.seed} | init {'independent' if c.independent_init else 'shared'} | device {search.device} | "
            f"threads {search.threads} | MPI {library}")


__all__ = ["run", "execute", "Result", "ConfigError", "SetupError", "TaskError", "Stopped"]
