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
import time
from collections.abc import Callable
from typing import Any

from hsmpi.config import Config
from hsmpi.engine import signals
from hsmpi.engine.history import CHECKPOINT
from hsmpi.engine.search import Search, SessionEnd
from hsmpi.io import checkpoint, lineage
from hsmpi.io.export import export_top
from hsmpi.io.files import DiskError, array_bytes, disk_error
from hsmpi.parallel.comm import SerialComm
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

    The run's last checkpoint goes to `comm.io_helper` (another rank on rank
    0's node) to write while rank 0 writes the results file (`write_handed`),
    unless its state is over HAND_OFF_MAX_BYTES: the send pickles a copy, and
    a large file's time is its data.
    """

    HAND_OFF_MAX_BYTES = 64 * 2**20

    def __init__(self, config: Config, intact: int | None = None) -> None:
        self.config = config
        self.intact = intact  # the sessions the newest complete checkpoint holds (None: there is none yet)
        self.path = os.path.join(config.out, checkpoint.LATEST)
        self.since = time.perf_counter()  # the last checkpoint, or the start of training
        self.cost: float | None = None  # what the last one took
        self.handed: tuple[dict[str, Any] | None, int] | None = None  # every rank: (rank 0's state, session)
        self.error = ""  # the helper's, when writing a handed-off checkpoint failed

    def due(self) -> bool:
        return checkpoint.due(self.config.checkpoint_seconds(), time.perf_counter() - self.since, self.cost)

    def session_ended(self, search: Search, end: SessionEnd) -> None:
        comm = search.comm
        # Rank 0's clock decides; every rank must agree, since collecting the state is collective.
        end.saved = bool(comm.bcast(end.last or end.stop != 0 or self.due() if comm.is_root else None))
        if end.saved:
            end.times[CHECKPOINT] = self.save(search, end.k, hand_off=end.last)
            if comm.is_root:  # the checkpoint column is rank 0's writing time, known only now
                search.history.set_checkpoint_time(end.times[CHECKPOINT])
        end.path = self.path

    def save(self, search: Search, k: int, hand_off: bool = False) -> float:
        """Write the state after session k; return the seconds it took (rank 0's, from the gather on)."""
        start = time.perf_counter()
        comm = search.comm
        state = search.state_dict(k)
        if hand_off and comm.io_helper != 0 and comm.bcast(
                array_bytes(state) <= self.HAND_OFF_MAX_BYTES if comm.is_root else None):
            self.handed = (state, k)
        else:
            error = None
            if comm.is_root:
                assert state is not None
                try:
                    lineage.sync(self.config.out)
                    self.path = checkpoint.save(self.config.out, state, k, self.config.keep_checkpoints,
                                                what=f"the checkpoint after session {k + 1}")
                except OSError as err:
                    error = self.disk_error(err, f"the checkpoint after session {k + 1}").strerror
            error = comm.bcast(error)  # every rank stops alike, with rank 0's one message
            if error:
                raise DiskError(errno.EIO, error)
            self.intact = k + 1
        self.since = time.perf_counter()
        self.cost = self.since - start
        return self.cost

    def write_handed(self, comm: SerialComm, exports: tuple[dict[str, Any], int] | None = None) -> bool:
        """Rank 0 sends the handed-off state; comm.io_helper writes it (a failure is kept, see `confirm`).

        `exports` (rank 0: the results record and how many top members to
        export): the helper writes best.pt and the top-K files too, when they
        are small.  Returns whether it does.
        """
        if self.handed is None:
            return False
        if comm.is_root:
            state, k = self.handed
            part = None
            if exports is not None:
                record, top = exports
                part = {"best": record["best"], "population": record["population"]}
                if array_bytes(part) > self.HAND_OFF_MAX_BYTES:
                    part = None
            comm.send((state, k, None if part is None else (part, top)), dest=comm.io_helper)
            self.handed = (None, k)  # the helper holds the state now
            return part is not None
        if comm.rank == comm.io_helper:
            state, k, handed_exports = comm.recv(source=0)
            try:
                self.path = checkpoint.save(self.config.out, state, k, self.config.keep_checkpoints)
            except OSError as err:
                self.error = (f"the final checkpoint could not be written ({_why(err, self.config.out)}), so the "
                              f"run cannot be extended with --resume")
            if handed_exports is not None:
                try:
                    export_top(self.config.out, *handed_exports)
                except OSError as err:
                    self.error += ("; " if self.error else "") + \
                        f"best.pt and the top-K files could not be written ({_why(err, self.config.out)})"
        return False

    def disk_error(self, err: OSError, what: str, then: str = "") -> DiskError:
        """`err` (writing `what`) as the one line a user reads: what failed, the room, what is intact and how
        to go on from it (`then`: what running again does)."""
        first = err if isinstance(err, DiskError) else disk_error(err, what, self.config.out)
        if self.intact is None:
            intact = "no checkpoint has been written yet: free space and start the run again"
        else:
            intact = (f"the checkpoint after session {self.intact} is intact: free space and run again with "
                      f"--resume auto --out {self.config.out}{then}")
        return DiskError(first.errno or errno.EIO, f"{first.strerror or first}; {intact}")

    def confirm(self, comm: SerialComm, results: str) -> None:
        """After the results file: the helper tells rank 0 how writing went; both raise if it failed."""
        if self.handed is None:
            return
        if comm.rank == comm.io_helper:
            comm.send(self.error, dest=0)
        elif comm.is_root:
            self.error = comm.recv(source=comm.io_helper)
        if self.error:
            raise DiskError(errno.EIO, f"{self.error}; the results are complete in {results}")


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
        done, total = sum(schedule[:k + 1]), sum(schedule)
        elapsed = time.perf_counter() - self.start
        hp = ", ".join(f"{n}={_fmt(v)}" for n, v in h.hparams[k][h.winner[k]].items())
        eta = elapsed / max(1, done - sum(schedule[:self.first])) * (total - done)
        objective = search.objective
        best = f"best val {h.winner_loss[k]:.5g} (member {h.winner[k]})" if objective.is_loss else (
            f"best val {objective.name} {objective.value(h.winner_score[k]):.5g} (member {h.winner[k]}, "
            f"loss {h.winner_loss[k]:.5g})")
        line = (f"session {k + 1}/{len(schedule)} | epochs {done}/{total} | {best} | {hp} | {t.sum():.2f}s "
                f"(train {t[0]:.2f}, val {t[1]:.2f}, share {t[2:5].sum():.3f}, "
                f"checkpoint {f'{t[CHECKPOINT]:.3f}' if end.saved else 'not due'}) | "
                f"elapsed {elapsed:.0f}s, eta {eta:.0f}s")
        self.log(line + (f" | {end.plan.note}" if end.plan.note else ""))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _why(err: OSError, folder: str) -> str:
    return f"{err.strerror or err}: {getattr(err, 'filename', None) or folder}"


