"""Errors for users, agreed across ranks, and the one wrapper that ends every rank when one fails.

A user error (a bad flag, task, space, data, checkpoint or output folder) is
found before training, agreed on by every rank (`agree`), raised on every rank
alike and printed once by rank 0.  Anything else raised on one rank is a
failure: `ends_every_rank_on_failure` prints it with the rank and host, then
calls `MPI_Abort`, so no other rank waits forever in a collective (the shape
of mpi4py's `python -m mpi4py`).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hsmpi.text import say

T = TypeVar("T")


class UsageError(ValueError):
    """A command line, config file or subcommand argument that cannot work."""


class SetupError(ValueError):
    """A problem with the task or settings found before training; every rank raises it."""


class NoFiniteModel(RuntimeError):
    """No member ever had a finite validation loss: the run has no model to return.

    The results file is written all the same (marked `finite_model = False`);
    `result` is what the run would have returned.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the user gave something that cannot work": exit 2, one line."""
    from hsmpi.algorithm.space import SpaceError
    from hsmpi.config import ConfigError
    from hsmpi.io.checkpoint import CheckpointError
    from hsmpi.tasks import TaskError

    return UsageError, SetupError, ConfigError, TaskError, CheckpointError, SpaceError


def agree(comm: Any, error: str | None, kind: type[Exception] = SetupError, prefix_others: bool = False) -> None:
    """Raise `kind` on every rank if any rank found a problem (collective); rank order decides which is told.

    With `prefix_others`, a rank that found nothing itself says the problem came from another rank.
    """
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        told = errors[0] if not prefix_others or comm.size == 1 or error else f"on another rank: {errors[0]}"
        raise kind(told)


def agreed(comm: Any, work: Callable[[], T], kind: type[Exception] = UsageError) -> T:
    """`work()` on every rank; if it fails on any (a file one node cannot see, a module missing on one
    node), every rank raises the first failure as `kind`, so no rank waits alone in a later collective."""
    result, error = None, None
    try:
        result = work()
    except user_errors() as err:
        error = f"{err}"
    except Exception as err:  # noqa: BLE001 - reported as a usage error, once
        error = f"{type(err).__name__}: {err}"
    agree(comm, error, kind, prefix_others=True)
    return result  # type: ignore[return-value]


@contextmanager
def ends_every_rank_on_failure(comm: Any, expected: tuple[type[BaseException], ...] = (),
                               always_report: bool = True) -> Iterator[None]:
    """Let `expected` exceptions (raised on every rank alike) through; on any other, end every rank.

    The failing rank prints `hsmpi: rank R of N failed (host): ...` and its
    traceback (with one rank, only when `always_report`: a Python caller sees
    the exception itself), then `MPI_Abort` ends the job.  A second Ctrl-C
    (KeyboardInterrupt) ends every rank too.
    """
    try:
        yield
    except expected:
        raise
    except KeyboardInterrupt:
        if comm.size > 1:  # the other ranks may sit in a collective
            comm.abort(130)
        raise
    except BaseException as err:
        if isinstance(err, SystemExit) and not err.code:
            raise
        if always_report or comm.size > 1:
            say(f"hsmpi: rank {comm.rank} of {comm.size} failed ({os.uname().nodename}): "
                f"{type(err).__name__}: {err}", sys.stderr)
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
        if comm.size > 1:
            comm.abort(1)
        raise
