"""Checkpoints: a run's state as HDF5 (arrays, JSON text and plain attributes; never pickles).

A checkpoint is a *generation*: shard files and the manifest that names them.

- Every rank that holds a stored state writes its own shard,
  `checkpoints/<generation>/rankNNNNN.h5`, in parallel: datasets `states/<key>`
  (a member's weights, optimizer state and buffers as bytes; `key` is the
  member's index, or `best` for the best state when no member holds it now),
  each with its layout (`header`, JSON) and `crc32`.  One stored state per
  distinct state: under the winner rule one in all, whatever S is.
- Rank 0 writes the manifest `checkpoint.h5` last, once every shard is on
  disk: the settings, history, hyperparameters, every member's random
  streams, the search's streams, the best member's record, and `shards` (JSON:
  which file holds which key, its bytes and checksum, and each file's size).
  A generation exists only once its manifest does.

Manifests are written as a temporary file in the same folder, flushed and
fsynced, the previous one kept as `checkpoint.prev.h5`, then `os.replace`;
`prune` removes the generation folders no manifest names any more (an older
one only after a newer one is complete).  Reading falls back to the backup,
with a warning, when the latest manifest is missing, truncated or not a
checkpoint, or one of its shards is missing or truncated.  Checkpoints from
before shards (every state inside `checkpoint.h5`, under `states/`) still read.

The manifest's state is a nested dict: dicts become groups, numpy arrays
datasets, and str / int / float / bool values attributes.  Anything else must
be made into one of those (JSON text) by its owner.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import h5py
import numpy as np

from hsmpi.io import hdf5
from hsmpi.io.files import array_bytes, write_atomic

FORMAT = "hsmpi-checkpoint"
SHARD_FORMAT = "hsmpi-checkpoint-shard"
LATEST = "checkpoint.h5"
BACKUP = "checkpoint.prev.h5"
GENERATIONS = "checkpoints"  # the folder of generation folders, beside the manifests
KEPT = "checkpoint-s[0-9][0-9][0-9][0-9].h5"


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
    prune(folder)
    return path


def _keep_copy(folder: str, path: str, keep: int) -> None:
    """Hard-link the outgoing checkpoint under its session number; drop the oldest beyond `keep - 1`."""
    with h5py.File(path, "r") as f:
        session = int(f.attrs.get("next_session", 0))
    name = os.path.join(folder, f"checkpoint-s{session:04d}.h5")
    kept = sorted(glob.glob(os.path.join(folder, KEPT)))
    for old in kept:  # copies from a later point of another timeline (a resume from an older copy) go
        if int(old[-7:-3]) >= session:
            os.unlink(old)
    tmp = name + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    os.link(path, tmp)
    os.replace(tmp, name)
    kept = sorted(glob.glob(os.path.join(folder, KEPT)))
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
        return _read_whole(latest, attrs_only), latest
    except CheckpointError as err:
        if not backup or not os.path.exists(backup):
            raise
        warn(f"hsmpi: warning: {err}; falling back to the backup {backup}")
        return _read_whole(backup, attrs_only), backup


def _read_whole(path: str, attrs_only: bool) -> dict[str, Any]:
    """A manifest whose every shard is there, at the size it was written."""
    state = read(path, attrs_only)
    try:
        with h5py.File(path, "r") as f:
            text = f["shards"][()] if "shards" in f else None
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path!r} is not a readable checkpoint ({err})") from None
    if text is not None:
        check_shards(path, shard_index({"shards": text}))
    return state


# ---- shards -----------------------------------------------------------------------------------------------
def shard_file(generation: str, rank: int) -> str:
    """Rank `rank`'s shard of `generation`, relative to the manifests' folder."""
    return f"{GENERATIONS}/{generation}/rank{rank:05d}.h5"


Payload = Callable[[str], tuple[str, np.ndarray]]  # key -> (its header as JSON, its bytes)


def write_shard(folder: str, name: str, keys: Iterable[str], payload: Payload, nbytes: int,
                what: str, written: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write one rank's shard `name` (relative to `folder`) holding `keys`; its record for the manifest.

    `payload(key)` gives each state as it is written (its bytes may live in a
    reused buffer: each is written before the next is asked for); `written()`
    is called once every state is in the file, before it is closed and fsynced.
    """
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    states: dict[str, Any] = {}

    def fill(f: h5py.File) -> None:
        hdf5.attr(f, "format", SHARD_FORMAT)
        for key in keys:
            header, data = payload(key)
            stored = hdf5.dataset(f, f"states/{key}", data)
            crc = zlib.crc32(data.data) if data.size else 0
            hdf5.attr(stored, "header", header)
            hdf5.attr(stored, "crc32", crc)
            states[key] = {"file": name, "nbytes": int(data.nbytes), "crc32": int(crc)}
        if written is not None:
            written()

    write_atomic(path, fill, nbytes, what)
    return {"file": name, "size": os.path.getsize(path), "states": states}


def shard_index(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `shards` record: {"generation", "files": {name: size}, "states": {key: {file, ...}}}."""
    text = manifest["shards"]
    return dict(json.loads(text.decode() if isinstance(text, bytes) else str(text)))


def index_of(generation: str, records: Iterable[dict[str, Any] | None]) -> str:
    """The ranks' shard records as the manifest's `shards` JSON."""
    files, states = {}, {}
    for record in records:
        if record:
            files[record["file"]] = record["size"]
            states.update(record["states"])
    return json.dumps({"generation": generation, "files": files, "states": states})


def check_shards(path: str, index: dict[str, Any]) -> None:
    """Every shard the manifest at `path` names exists at the size it was written; else CheckpointError."""
    folder = os.path.dirname(os.path.abspath(path))
    for name, size in index["files"].items():
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            raise CheckpointError(f"{path}: its shard {full} is missing")
        found = os.path.getsize(full)
        if found != size:
            raise CheckpointError(f"{path}: its shard {full} is {found} bytes, but {size} were written "
                                  "(truncated or overwritten)")


def read_state(path: str, index: dict[str, Any], key: str) -> tuple[str, np.ndarray]:
    """State `key` of the manifest at `path`: (its header as JSON, its bytes), its checksum checked."""
    entry = index["states"].get(key)
    if entry is None:
        raise CheckpointError(f"{path} names no stored state {key!r}")
    full = os.path.join(os.path.dirname(os.path.abspath(path)), entry["file"])
    try:
        with h5py.File(full, "r") as f:
            if f.attrs.get("format") != SHARD_FORMAT:
                raise CheckpointError(f"{full} is not an hsmpi checkpoint shard")
            dataset = f[f"states/{key}"]
            header = dataset.attrs["header"]
            data = np.empty(dataset.shape, dtype=np.uint8)
            if data.size:
                dataset.read_direct(data)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"the shard {full} of {path} cannot be read ({err})") from None
    crc = zlib.crc32(data.data) if data.size else 0
    if data.nbytes != entry["nbytes"] or crc != entry["crc32"]:
        raise CheckpointError(f"the shard {full} of {path} holds other bytes for state {key} than were written "
                              f"(checksum {crc:#010x}, expected {entry['crc32']:#010x})")
    return header.decode() if isinstance(header, bytes) else str(header), data


def manifests(folder: str) -> list[str]:
    """The manifests in `folder`: the latest, the backup and the kept copies that exist."""
    names = [os.path.join(folder, n) for n in (LATEST, BACKUP)]
    return [p for p in names if os.path.exists(p)] + sorted(glob.glob(os.path.join(glob.escape(folder), KEPT)))


def prune(folder: str) -> list[str]:
    """Remove the generation folders that no manifest in `folder` names (an interrupted checkpoint's, or one
    a newer checkpoint replaced); the names removed.

    Every HDF5 file in `folder` that is a manifest counts, whatever its name (a copy kept by hand too).
    If a file named like a manifest cannot be read, nothing is removed: it may name one.
    """
    root = os.path.join(folder, GENERATIONS)
    if not os.path.isdir(root):
        return []
    named = set()
    for path in glob.glob(os.path.join(glob.escape(folder), "*.h5")):
        try:
            with h5py.File(path, "r", locking=False) as f:
                if f.attrs.get("format") == FORMAT:
                    named.add(str(f.attrs.get("generation", "")))
        except (OSError, KeyError, ValueError):
            if os.path.basename(path).startswith("checkpoint"):
                return []
    removed = []
    for name in sorted(os.listdir(root)):
        if name not in named and os.path.isdir(os.path.join(root, name)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(f"{GENERATIONS}/{name}")
    return removed
