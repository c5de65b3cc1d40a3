"""Writing files so that no run loses work: atomically, with room checked first, one clear error, no litter.

- `replace_atomically` / `write_atomic`: a temporary file in the target's folder, fsynced, renamed over
  the target; a run killed at any point leaves the old file or the new one, never half of one.
- Before an HDF5 file is written, `write_atomic` checks that the folder has room for it (the arrays'
  bytes and a margin).  A full disk, a lost permission or a quota is a `DiskError`: one message naming
  the folder, the bytes needed and free, and what is intact; the half-written file is removed; none of
  the dozens of tracebacks h5py's object destructors print when a file cannot be flushed reach the user.
- `remove_litter`: what interrupted writes leave behind (a `kill -9` in the middle of one), recognised
  by hsmpi's own temporary names and removed when a run starts in the folder.
"""

from __future__ import annotations

import errno
import fnmatch
import gc
import glob
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import h5py
import numpy as np

# Every temporary name hsmpi writes under, in an output folder (none of them is ever read back).
LITTER = (".tmp-*", ".checkpoint-new.h5", "checkpoint-s[0-9][0-9][0-9][0-9].h5.tmp", "*.pt.tmp",
          "lineage.jsonl.tmp")
MARGIN_BYTES = 256 << 10  # HDF5's own metadata and what the size estimate misses (with 5% of the arrays)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskError(OSError):
    """A file could not be written (no space, no permission, a quota): the message says what is intact."""


def fresh_folder_name(sessions: int) -> str:
    """A new folder's name for files written after `sessions` sessions: the count and a random tag, never
    reused, so a write never lands in a folder that a file written before (an older checkpoint manifest,
    results file) still names."""
    return f"s{sessions:04d}-{secrets.token_hex(4)}"


def free_bytes(folder: str) -> int:
    """Bytes an unprivileged writer may still use in `folder`'s file system."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def array_bytes(state: Any) -> int:
    """Bytes of the numpy arrays in a nested dict (or list) of them."""
    if isinstance(state, dict):
        return sum(array_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(array_bytes(v) for v in state)
    return int(state.nbytes) if isinstance(state, np.ndarray) else 0


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _errno_of(err: BaseException) -> int | None:
    """The OS error number behind an OSError or an h5py RuntimeError ('errno = 28' in its text)."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"errno = (\d+)", str(err))
    return int(found.group(1)) if found else None


def disk_error(err: BaseException, what: str, folder: str, needed: int | None = None) -> DiskError:
    """`err` (raised writing `what` into `folder`) as the one line a user reads."""
    number = _errno_of(err)
    why = os.strerror(number) if number else f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    room = ""
    if number in NO_ROOM or needed is not None:
        try:
            room = f"; it needs about {_size(needed or 0)} and {_size(free_bytes(folder))} are free" if needed else \
                f"; {_size(free_bytes(folder))} are free"
        except OSError:
            pass
    error = DiskError(number or errno.EIO, f"{what} could not be written in {folder} ({why}{room})")
    error.no_room = number in NO_ROOM  # type: ignore[attr-defined]
    return error


def check_room(folder: str, needed: int, what: str) -> None:
    """Raise DiskError before writing `needed` bytes into `folder` if they will not fit."""
    try:
        free = free_bytes(folder)
    except OSError:
        return  # a file system that does not say: find out by writing
    if free < needed:
        raise disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), what, folder, needed)


@contextmanager
def _quiet_destructors() -> Iterator[list[bool]]:
    """While a failed HDF5 file is torn down, h5py's object destructors each report the same failure to
    flush as an 'exception ignored': swallow those (the failure itself is raised once, by the caller).

    The caller marks a failure by setting the yielded flag; only then are the leftover objects collected
    (a full collection costs about 0.1 s in a process holding torch, too much for every write).  Writes
    in two threads at once (a checkpoint writer and the results file) share one installed hook.
    """
    with _HOOK_LOCK:
        if _HOOK["depth"] == 0:
            _HOOK["previous"] = sys.unraisablehook
            sys.unraisablehook = _swallow_h5py_flush_errors
        _HOOK["depth"] += 1
    failed = [False]
    try:
        yield failed
    finally:
        if failed[0]:
            gc.collect()  # whatever destructors are left run now, under the hook
        with _HOOK_LOCK:
            _HOOK["depth"] -= 1
            if _HOOK["depth"] == 0:
                sys.unraisablehook = _HOOK["previous"]


_HOOK_LOCK = threading.Lock()
_HOOK: dict[str, Any] = {"depth": 0, "previous": sys.unraisablehook}


def _swallow_h5py_flush_errors(unraisable: Any) -> None:
    where = f"{unraisable.object!r} {unraisable.err_msg or ''}"
    if isinstance(unraisable.exc_value, (RuntimeError, OSError)) and "h5py" in where:
        return
    _HOOK["previous"](unraisable)


def replace_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Have `write(tmp)` write a temporary file in `path`'s folder, fsync it, then rename it over `path`.

    A run killed at any point leaves either the old file or the new one, never half of one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _test_only_pause(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, fill: Any, nbytes: int = 0, what: str | None = None) -> None:
    """Write an HDF5 file atomically: `fill(f)` gets the open h5py File; `nbytes`: its arrays' size.

    Raises DiskError (the temporary file removed, one message) when the folder has no room for it or
    the write fails in the file system.
    """
    folder = os.path.dirname(os.path.abspath(path))
    label = what or os.path.basename(path)
    needed = int(nbytes * 1.05) + MARGIN_BYTES
    check_room(folder, needed, label)

    def write(tmp: str) -> None:
        failure: BaseException | None = None
        with _quiet_destructors() as failed:
            try:
                # No HDF5 file lock: the file is new and private until its rename, and a lock taken here
                # would be held on by any process forked meanwhile (a DataLoader worker), failing the reopen.
                f = h5py.File(tmp, "w", locking=False)
                try:
                    fill(f)
                finally:
                    f.close()
                with h5py.File(tmp, "r", locking=False):  # a file that failed to flush on close does not open
                    pass
            except (OSError, RuntimeError) as err:
                if _errno_of(err) is None and not isinstance(err, OSError):
                    raise
                # A new error without the failed one's traceback, whose frames hold the file's objects:
                # they are freed here, while their destructors' complaints are swallowed.
                failure = disk_error(err, label, folder, needed)
                failed[0] = True
        if failure is not None:
            raise failure

    try:
        replace_atomically(path, write, ".h5")
    except DiskError:
        raise
    except OSError as err:  # the fsync or the rename
        raise disk_error(err, label, folder, needed) from None


def remove_litter(folder: str) -> list[str]:
    """Remove what interrupted writes left in `folder` (hsmpi's temporary names only); the names removed."""
    removed = []
    for pattern in LITTER:
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            try:
                os.unlink(path)
                removed.append(os.path.basename(path))
            except IsADirectoryError:
                continue  # not a file hsmpi left: leave it
            except OSError:
                continue
    return sorted(removed)


def _test_only_pause(path: str) -> None:
    """HSMPI_TEST_SLOW_WRITE=SECONDS: wait that long before each rename (tests kill a rank mid-write);
    with HSMPI_TEST_SLOW_MATCH=GLOB only before writes of a file whose path matches, and with
    HSMPI_TEST_SLOW_SKIP=N not before the first N of those."""
    pause = os.environ.get("HSMPI_TEST_SLOW_WRITE")
    if not pause or not fnmatch.fnmatch(path, os.environ.get("HSMPI_TEST_SLOW_MATCH", "*")):
        return
    _PAUSES[0] += 1
    if _PAUSES[0] > int(os.environ.get("HSMPI_TEST_SLOW_SKIP", "0")):
        time.sleep(float(pause))


_PAUSES = [0]  # matching writes so far in this process
