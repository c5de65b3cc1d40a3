"""Checkpoints: a run's state as HDF5 (arrays, JSON text and plain attributes; never pickles).

Written by rank 0 after a session (which sessions: `due`), after the last one
and whenever the run is told to stop: a temporary file in the same folder,
flushed and fsynced, the previous checkpoint kept as `checkpoint.prev.h5`,
then `os.replace`.  Reading falls back to the backup, with a warning, when the
latest file is missing, truncated or not a checkpoint.

The state is a nested dict: dicts become groups, numpy arrays datasets, and
str / int / float / bool values attributes.  Anything else must be made into
one of those (JSON text) by its owner.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import h5py
import numpy as np

from hsmpi.io import hdf5
from hsmpi.io.files import array_bytes, write_atomic

FORMAT = "hsmpi-checkpoint"
LATEST = "checkpoint.h5"
BACKUP = "checkpoint.prev.h5"


# --checkpoint-interval auto: keep writing checkpoints to about this share of the run's time, never
# checkpoint more often than AUTO_MIN_SECONDS (at most that much work goes unsaved to keep runs of tiny
# sessions fast), and never let more than AUTO_MAX_SECONDS go unsaved because a checkpoint is expensive.
AUTO_SHARE = 0.02
AUTO_MIN_SECONDS = 1.0
AUTO_MAX_SECONDS = 600.0


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


def due(interval: float | None, since_last: float, last_cost: float | None) -> bool:
    """Should a checkpoint be written after this session (not the last, no stop asked for)?

    `interval`: seconds between checkpoints (0: after every session) or None
    for auto: 1/AUTO_SHARE times what the previous checkpoint took, within
    [AUTO_MIN_SECONDS, AUTO_MAX_SECONDS] (the minimum before the first one).
    Sessions of seconds or more are all checkpointed; a run of many
    sub-second sessions spends about 2% of its time on checkpoints instead of
    most of it.  `since_last`: seconds since the last checkpoint (or since
    training began); `last_cost`: seconds the last one took, None before the first.
    """
    if interval is None:
        wanted = AUTO_MIN_SECONDS if last_cost is None else last_cost / AUTO_SHARE
        interval = min(max(wanted, AUTO_MIN_SECONDS), AUTO_MAX_SECONDS)
    return since_last >= interval


def _fill(group: h5py.Group, state: dict[str, Any]) -> None:
    for key, value in state.items():
        if isinstance(value, dict):
            _fill(hdf5.group(group, key), value)
        elif isinstance(value, np.ndarray):
            hdf5.dataset(group, key, value)
        elif isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
            hdf5.attr(group, key, value)
        else:
            raise TypeError(f"checkpoint field {key!r}: cannot store {type(value).__name__}")


def save(folder: str, state: dict[str, Any], session: int, keep: int = 1, what: str = "the checkpoint") -> str:
    """Write `state` as the latest checkpoint in `folder`, keeping the previous one as backup.

    With keep > 1, also keep copies named `checkpoint-sNNNN.h5` of the last
    `keep - 1` sessions before the latest.
    """
    path = os.path.join(folder, LATEST)

    def fill(f: h5py.File) -> None:
        hdf5.attr(f, "format", FORMAT)
        _fill(f, state)

    tmp = os.path.join(folder, ".checkpoint-new.h5")
    write_atomic(tmp, fill, array_bytes(state), what)
    if os.path.exists(path):
        if keep > 1:
            _keep_copy(folder, path, keep)
        os.replace(path, os.path.join(folder, BACKUP))
    os.replace(tmp, path)
    _fsync_dir(folder)
    return path


def _keep_copy(folder: str, path: str, keep: int) -> None:
    """Hard-link the outgoing checkpoint under its session number; drop the oldest beyond `keep - 1`."""
    with h5py.File(path, "r") as f:
        session = int(f.attrs.get("next_session", 0))
    name = os.path.join(folder, f"checkpoint-s{session:04d}.h5")
    kept = sorted(glob.glob(os.path.join(folder, "checkpoint-s[0-9][0-9][0-9][0-9].h5")))
    for old in kept:  # copies from a later point of another timeline (a resume from an older copy) go
        if int(old[-7:-3]) >= session:
            os.unlink(old)
    tmp = name + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    os.link(path, tmp)
    os.replace(tmp, name)
    kept = sorted(glob.glob(os.path.join(folder, "checkpoint-s[0-9][0-9][0-9][0-9].h5")))
    for old in kept[: max(0, len(kept) - (keep - 1))]:
        os.unlink(old)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str, attrs_only: bool = False) -> dict[str, Any]:
    """One checkpoint file as a nested dict; CheckpointError if it is not a readable checkpoint."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a folder with no checkpoint in it")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path!r} is an HDF5 file but not an hsmpi checkpoint")
            if attrs_only:
                return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            return hdf5.read_group(f)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path!r} is not a readable checkpoint ({err})") from None


def locate(resume: str, out: str) -> str | None:
    """The checkpoint `--resume` names: a file, a folder holding one, or 'auto' (out, if any)."""
    if resume == "auto":
        has = any(os.path.exists(os.path.join(out, n)) for n in (LATEST, BACKUP))
        return out if has else None
    return resume


def load(where: str, warn: Any = print, attrs_only: bool = False) -> tuple[dict[str, Any], str]:
    """Read the latest checkpoint at `where` (a folder or file), falling back to its backup."""
    if os.path.isdir(where):
        latest, backup = os.path.join(where, LATEST), os.path.join(where, BACKUP)
    else:
        latest = where
        backup = os.path.join(os.path.dirname(where), BACKUP) if os.path.basename(where) == LATEST else ""
    try:
        return read(latest, attrs_only), latest
    except CheckpointError as err:
        if not backup or not os.path.exists(backup):
            raise
        warn(f"hsmpi: warning: {err}; falling back to the backup {backup}")
        return read(backup, attrs_only), backup
