"""What happens after each session besides the search itself, in the order the loop calls it.

- `LineageLog`: one JSON line per session in `<out>/lineage.jsonl` (rank 0);
- `StopRequests`: a stop signal on any rank, or --stop-after, stops every rank at this boundary;
- `Checkpoints`: a checkpoint when one is due, after the last session and at every stop;
- `SessionLine`: rank 0's one line per session.

Each is small and owns its own state; they read the search, and say back
through the `SessionEnd` they are handed (`stop`, `saved`, the checkpoint's
seconds in `times`).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hsmpi.config import Config
from hsmpi.engine import signals, snapshot
from hsmpi.engine.history import CHECKPOINT
from hsmpi.engine.population import NO_WRITER
from hsmpi.engine.search import Search, SessionEnd
from hsmpi.io import checkpoint, lineage
from hsmpi.io.files import DiskError, disk_error, fresh_folder_name
from hsmpi.parallel import flatstate
from hsmpi.parallel.flatstate import header_to_json
from hsmpi.parallel.share import Holder, Saved, as_bytes
from hsmpi.text import say


class LineageLog:
    """Appends each session's line; synced before each checkpoint that counts on it.

    A line that cannot be written (a full disk) is a warning, once: the log is a record beside the run,
    and the next checkpoint or the results file reports the disk as the error it is.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.failed = False

    def session_ended(self, search: Search, end: SessionEnd) -> None:
        if not search.comm.is_root or self.failed:
            return
        try:
            lineage.append(self.out, search.history.lineage_record(end.k, search.hparams))
        except OSError as err:
            self.failed = True
            say(f"hsmpi: warning: the lineage log in {self.out} could not be written ({err.strerror or err}); "
                f"it ends after session {end.k}", sys.stderr)


class StopRequests:
    """SIGTERM, SIGINT or SIGUSR1 on any rank, or --stop-after K: every rank stops after this session."""

    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after

    def session_ended(self, search: Search, end: SessionEnd) -> None:
        if end.last:
            return
        end.stop = int(search.comm.allreduce_max(float(signals.requested())))  # the same on every rank
        if not end.stop and self.stop_after is not None and end.k + 1 >= self.stop_after:
            end.stop = -1


class Checkpoints:
    """Writes checkpoints (collective) and, on rank 0, knows when the next one is due.

    A checkpoint is written in two halves (hsmpi.io.checkpoint has the
    layout).  `begin`: every rank writes the states it stores to its own shard,
    by default from a background thread while the next session trains (each
    member trains again once the writer has taken its state, and the share
    step waits for the writer's last member; see `_Pending`).
    `complete`, at the next session boundary (or as soon as the run must
    stop): every rank waits for its writer, and rank 0 writes the manifest
    once every shard is on disk.  With --checkpoint-interval auto, what the
    boundary cost the run (not the write in the background) sets the pace.  A write that failed on
    any rank is one DiskError on every rank there, naming the checkpoint that
    is intact.  The last checkpoint completes after the results file (the two
    are written at once), a stop's before the run stops.
    """

    def __init__(self, config: Config, intact: int | None = None) -> None:
        self.config = config
        self.intact = intact  # the sessions the newest complete checkpoint holds (None: there is none yet)
        self.path = os.path.join(config.out, checkpoint.LATEST)
        self.since = time.perf_counter()  # the last checkpoint, or the start of training
        self.cost: float | None = None  # what the last one took, as the run saw it
        self.pending: _Pending | None = None  # a checkpoint begun and not yet complete

    def due(self) -> bool:
        return checkpoint.due(self.config.checkpoint_seconds(), time.perf_counter() - self.since, self.cost)

    def session_ended(self, search: Search, end: SessionEnd) -> None:
        comm = search.comm
        start = time.perf_counter()
        completed = self.pending is not None
        end.written = self.complete(search)
        # Rank 0's clock decides; every rank must agree, since a checkpoint is collective.
        end.saved = bool(comm.bcast(end.last or end.stop != 0 or self.due() if comm.is_root else None))
        if end.saved:
            background = self.config.checkpoint_async and not end.stop
            self.begin(search, end.k, background)
            if not background:
                self.complete(search)
            self.since = time.perf_counter()
            self.cost = self.since - start
        spent = time.perf_counter() - start
        if end.saved or completed:  # what this boundary spent on checkpoints, as the run saw it
            end.times[CHECKPOINT] = spent
            if comm.is_root:
                search.history.set_checkpoint_time(spent)
        end.path = self.path

    def begin(self, search: Search, k: int, background: bool) -> None:
        """Start the checkpoint after session k (collective): the manifest's content on rank 0, and this
        rank's shard, written now or (`background`) by a thread while the next session trains."""
        comm, pop = search.comm, search.population
        generation = comm.bcast(fresh_folder_name(k + 1) if comm.is_root else None)
        gathered = comm.gather([(m.index, m.rng_state_dict()) for m in pop.members])
        streams = None if gathered is None else [x for part in gathered for x in part]
        manifest = snapshot.manifest(search, k, streams) if streams is not None else None
        what = "the final checkpoint" if k == len(search.schedule) - 1 else f"the checkpoint after session {k + 1}"
        pending = _Pending(k, generation, manifest, what)
        states = snapshot.stored_states(search, k)
        if states:
            if background:
                pending.start(self.config.out, checkpoint.shard_file(generation, comm.rank), states, pop.buffer)
                pop.writer = pending
            else:
                pending.write(self.config.out, checkpoint.shard_file(generation, comm.rank), states, pop.buffer)
        self.pending = pending

    def complete(self, search: Search, results: str | None = None) -> float:
        """Finish the checkpoint begun last, if any (collective): wait for this rank's shard, then rank 0
        writes the manifest.  `results`: the run's results file, complete already (the last checkpoint).
        Returns (on rank 0) the seconds the slowest rank took to write its shard."""
        pending, self.pending = self.pending, None
        if pending is None:
            return 0.0
        comm = search.comm
        if pending.thread is not None:
            pending.thread.join()
            search.population.writer = NO_WRITER
        failure = None if pending.failure is None else self._says(pending.failure, pending.what, results)
        parts = comm.gather((failure, pending.record))
        error, written = None, 0.0
        if comm.is_root:
            assert parts is not None and pending.manifest is not None
            error = next((e for e, _ in parts if e), None)
            written = max((r["seconds"] for _, r in parts if r), default=0.0)
            if error is None:
                pending.manifest["generation"] = pending.generation
                pending.manifest["shards"] = np.array(checkpoint.index_of(pending.generation, [r for _, r in parts]),
                                                      dtype=object)
                try:
                    lineage.sync(self.config.out)
                    self.path = checkpoint.save(self.config.out, pending.manifest, pending.k,
                                                self.config.keep_checkpoints, what=pending.what)
                except OSError as err:
                    error = self._says(err, pending.what, results)
            if error is not None:
                checkpoint.prune(self.config.out)  # the shards of the generation that has no manifest
        error = comm.bcast(error)  # every rank stops alike, with one message
        if error:
            raise DiskError(errno.EIO, error)
        self.intact = pending.k + 1
        return written

    def _says(self, err: BaseException, what: str, results: str | None) -> str:
        if results is None:
            return str(self.disk_error(err, what).strerror)
        first = err if isinstance(err, DiskError) else disk_error(err, what, self.config.out)
        return (f"{first.strerror or first}, so the run cannot be extended with --resume; the results are "
                f"complete in {results}")

    def disk_error(self, err: BaseException, what: str, then: str = "") -> DiskError:
        """`err` (writing `what`) as the one line a user reads: what failed, the room, what is intact and how
        to go on from it (`then`: what running again does)."""
        first = err if isinstance(err, DiskError) else disk_error(err, what, self.config.out)
        if self.intact is None:
            intact = "no checkpoint has been written yet: free space and start the run again"
        else:
            intact = (f"the checkpoint after session {self.intact} is intact: free space and run again with "
                      f"--resume auto --out {self.config.out}{then}")
        return DiskError(first.errno or errno.EIO, f"{first.strerror or first}; {intact}")


_WRITERS: set[threading.Thread] = set()  # shard writers running in this process


def _wait_for_writers() -> None:
    """Before this process forks (a DataLoader starting its workers): let every shard writer finish, so no
    child starts with h5py's lock or a half-written file held by a thread it does not have."""
    for thread in list(_WRITERS):
        if thread is not threading.current_thread():
            thread.join()


os.register_at_fork(before=_wait_for_writers)


class _Pending:
    """One checkpoint begun: its generation, rank 0's manifest, this rank's shard (being) written.

    In the background the writer packs each member's state into the rank's
    share buffer (one state's size: the buffer that step 4 uses after the
    training) just before writing it, in the order the members train;
    `hold(i)` lets member i train again only once its state is packed, and
    `hold_buffer()` lets step 4 have the buffer back once the last one is
    in the file (not waiting for its fsync).  States kept as bytes already
    (the best so far) are written from those bytes, last.
    """

    def __init__(self, k: int, generation: str, manifest: dict[str, Any] | None, what: str) -> None:
        self.k = k
        self.generation = generation
        self.manifest = manifest
        self.what = what
        self.record: dict[str, Any] | None = None  # this rank's shard, once written
        self.failure: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.packed: dict[int, threading.Event] = {}  # members whose state the writer has still to take
        self.released = threading.Event()  # the writer is done with the share buffer

    def start(self, out: str, name: str, states: dict[str, Holder | Saved], buffer: flatstate.Buffer) -> None:
        """Write the shard from a thread (`buffer`: the share buffer, lent until `released`)."""
        self.packed = {int(key): threading.Event() for key, s in states.items() if not isinstance(s, Saved)}
        self.thread = threading.Thread(target=self._run, args=(out, name, states, buffer),
                                       name="hsmpi-checkpoint", daemon=True)
        _WRITERS.add(self.thread)
        try:
            self.thread.start()
        except BaseException:
            _WRITERS.discard(self.thread)
            raise

    def hold(self, member: int) -> None:
        """Before member `member` trains: wait until the writer has taken its state."""
        event = self.packed.get(member)
        if event is not None:
            event.wait()

    def hold_buffer(self) -> None:
        """Before the share buffer is used: wait until the writer has written its last member's state."""
        self.released.wait()

    def _run(self, out: str, name: str, states: dict[str, Holder | Saved], buffer: flatstate.Buffer) -> None:
        try:
            self.write(out, name, states, buffer)
        finally:
            for event in self.packed.values():  # a failed writer holds back no member
                event.set()
            self.released.set()
            _WRITERS.discard(threading.current_thread())

    def write(self, out: str, name: str, states: dict[str, Holder | Saved], buffer: flatstate.Buffer) -> None:
        """Write the shard; a failure is kept for `Checkpoints.complete` to tell every rank."""
        start = time.perf_counter()
        keys = sorted(states, key=lambda key: isinstance(states[key], Saved))  # members first, in order
        headers: dict[str, flatstate.Header] = {}  # each member's layout, taken once: it holds until it trains

        def payload(key: str) -> tuple[str, np.ndarray]:
            if isinstance(states[key], Saved):  # the members' states, all written: the buffer is free
                self.released.set()
            header, data = as_bytes(states[key], buffer, headers[key])
            if key.isdigit() and int(key) in self.packed:
                self.packed[int(key)].set()  # its bytes are in the buffer: the member may train on
            return header_to_json(header), data
        try:
            headers.update({key: s.header if isinstance(s, Saved) else s.header() for key, s in states.items()})
            nbytes = sum(h.nbytes for h in headers.values())
            self.record = checkpoint.write_shard(out, name, keys, payload, nbytes, self.what,
                                                 written=self.released.set)
            self.record["seconds"] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - told on every rank at the boundary, as one error
            self.failure = err


class SessionLine:
    """Rank 0's one line per session: the winner, its values, where the time went, the time left."""

    def __init__(self, log: Callable[[str], None], start: float, first: int) -> None:
        self.log = log
        self.start = start  # this process's start
        self.first = first  # the first session this process runs (later than 0 when resumed)

    def session_ended(self, search: Search, end: SessionEnd) -> None:
        if not search.comm.is_root:
            return
        h, k, t = search.history, end.k, end.times
        schedule = search.schedule
        done, total = sum(h.epochs[:k + 1]), sum(schedule)  # what ran (--plateau: not the shares)
        elapsed = time.perf_counter() - self.start
        hp = ", ".join(f"{n}={_fmt(v)}" for n, v in h.hparams[k][h.winner[k]].items())
        eta = elapsed / max(1, done - sum(h.epochs[:self.first])) * (total - done)
        objective = search.objective
        best = f"best val {h.winner_loss[k]:.5g} (member {h.winner[k]})" if objective.is_loss else (
            f"best val {objective.name} {objective.value(h.winner_score[k]):.5g} (member {h.winner[k]}, "
            f"loss {h.winner_loss[k]:.5g})")
        line = (f"{search.unit} {k + 1}/{len(schedule)} | epochs {done}/{total} | {best} | {hp} | {t.sum():.2f}s "
                f"(train {t[0]:.2f}, val {t[1]:.2f}, share {t[2:5].sum():.3f}, "
                f"checkpoint {f'{t[CHECKPOINT]:.3f}' if end.saved else 'not due'}"
                f"{f', the one before written in {end.written:.2f} in the background' if end.written else ''}) | "
                f"elapsed {elapsed:.0f}s, eta {eta:.0f}s")
        self.log(line + (f" | {end.plan.note}" if end.plan.note else ""))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
