"""The search's checkpoint: what each rank stores after a session, rank 0's manifest, and the restore.

A checkpoint holds one copy of each distinct state the members hold, each
written by the rank that owns it (hsmpi.io.checkpoint's shards), and a
manifest on rank 0 with every member's hyperparameters, random streams and
the history.  `restore` reads it back on any layout: each rank reads only
the states its own members hold.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from hsmpi import __version__
from hsmpi.algorithm.plan import BEST_EVER
from hsmpi.algorithm.space import describe_space
from hsmpi.engine.history import Best, History
from hsmpi.errors import agree
from hsmpi.io import checkpoint
from hsmpi.parallel.flatstate import header_from_json
from hsmpi.parallel.share import Holder, Saved, load_saved, share_state

if TYPE_CHECKING:
    from hsmpi.engine.search import Search


def best_key(search: Search, k: int) -> str:
    """Under which key the checkpoint after session k stores the best state: the winner's own index
    when it is this session's winner and still holds exactly that state (stored once), else "best"."""
    b = search.best
    if b.session == k and b.session >= 0 and int(search.last_sources[b.member]) == b.member:
        return str(b.member)
    return "best"


def stored_states(search: Search, k: int) -> dict[str, Holder | Saved]:
    """The states this rank writes to the checkpoint after session k, by key.

    After the share step, members that copied a donor hold exactly its
    state, so one copy per distinct state is stored, by the rank that owns
    the member holding it: one in all under the winner rule, whatever S is.
    """
    pop = search.population
    ids = set(state_ids(search.last_sources).tolist())
    states: dict[str, Holder | Saved] = {str(i): pop.local[i] for i in sorted(ids) if i in pop.local}
    key = best_key(search, k)
    if search.best.state is not None and (key == "best" or key in states):
        states[key] = search.best.state  # the same bytes as the winner's, copied already: no second copy
    return states


def manifest(search: Search, k: int, streams: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """Rank 0: the checkpoint's manifest after session k, but for its shards (`streams`: every member's
    random streams, by index)."""
    assert search.streams is not None
    pop, c = search.population, search.population.config
    rngs = [r for _, r in sorted(streams, key=lambda x: x[0])]
    members: dict[str, Any] = {"state_id": state_ids(search.last_sources),
                               "hparams": np.array(json.dumps(search.hparams), dtype=object),  # S can be large
                               "data_rng": np.stack([r["data"] for r in rngs]),
                               "torch_rng": np.stack([r["torch"] for r in rngs])}
    if "cuda" in rngs[0]:
        members["cuda_rng"] = np.stack([r["cuda"] for r in rngs])
    best = search.best
    return {
        "hsmpi_version": __version__, "next_session": k + 1, "task": c.task, "population": pop.size,
        "config": json.dumps(c.to_dict()), "space": json.dumps(describe_space(search.space)),
        "best_val_loss": float(best.score), "pending_selection": bool(k == len(search.schedule) - 1),
        "members": members, "root_rng": search.streams.state_dict(), "history": search.history.state_dict(),
        "best": {"val_loss": float(best.score), "session": best.session, "member": best.member,
                 "hparams": json.dumps(best.hparams), "key": best_key(search, k)},
    }


def restore(search: Search, ckpt: dict[str, Any] | None, path: str = "") -> None:
    """Continue from the checkpoint at `path` (collective; its manifest `ckpt` is read on rank 0), on any
    layout.

    Each rank reads the stored states its members hold, and the best state
    if it owns that member, from whichever shard holds them; no rank reads
    everything.  Each member's hyperparameters and random streams come from
    rank 0.  (A checkpoint from before shards has every state in `ckpt`:
    rank 0 sends each to the members that hold it.)
    """
    comm, pop = search.comm, search.population
    ck: dict[str, Any] = ckpt if ckpt is not None else {}  # read on rank 0 only
    root = comm.is_root
    if root:
        b = ck["best"]
        key = str(b["key"]) if "key" in b else "best"
        record = (float(b["val_loss"]), int(b["session"]), int(b["member"]), key)
    info = comm.bcast((ck["next_session"], ck["pending_selection"], ck["members"]["state_id"], record,
                       checkpoint.shard_index(ck) if "shards" in ck else None, path) if root else None)
    search.next_session, search.pending_selection, ids, (score, session, member, best_key), index, path = info
    search.last_sources = np.asarray(ids, dtype=np.int64)
    search.best = Best(score, session, member, json.loads(ck["best"]["hparams"]) if root else {})
    hparams = json.loads(ck["members"]["hparams"]) if root else []
    mine = comm.scatter(pop.per_rank(hparams) if root else None)
    if index is not None:
        _read_states(search, path, index, ids, best_key)
    else:
        _receive_states(search, ck, ids)
    for m in pop.members:
        m.set_hparams(mine[m.index])
    streams = None
    if root:
        mem, cuda = ck["members"], ck["members"].get("cuda_rng")
        streams = pop.per_rank([{"data": mem["data_rng"][i], "torch": mem["torch_rng"][i],
                                 "cuda": None if cuda is None else cuda[i]} for i in range(pop.size)])
    mine_streams = comm.scatter(streams)
    for m in pop.members:
        m.load_rng_state_dict(mine_streams[m.index])
    if root:
        assert search.streams is not None
        search.hparams = hparams
        search.streams.load_state_dict(ck["root_rng"])
        search.history = History.from_state_dict(ck["history"], search.space, search.objective)
    search.done = int(comm.bcast(sum(search.history.epochs) if root else None))  # what --plateau's budget needs


def _read_states(search: Search, path: str, index: dict[str, Any], ids: np.ndarray, best_key: str) -> None:
    """Each rank reads what its members hold, and its owner the best state, from the shards."""
    pop = search.population
    wanted = {m.index: "best" if ids[m.index] == BEST_EVER else str(int(ids[m.index])) for m in pop.members}
    keys = sorted(set(wanted.values()) | ({best_key} if search.best.member in pop.local else set()))
    error, read = None, {}
    try:
        for key in keys:
            header, data = checkpoint.read_state(path, index, key)
            read[key] = Saved(header_from_json(header), data)
    except checkpoint.CheckpointError as err:
        error = str(err)
    agree(search.comm, error, checkpoint.CheckpointError)
    for key, saved in read.items():
        load_saved(pop.buffer, saved, [m for m in pop.members if wanted[m.index] == key])
    if search.best.member in pop.local:
        search.best.state = read[best_key]


def _receive_states(search: Search, ck: dict[str, Any], ids: np.ndarray) -> None:
    """A checkpoint from before shards: rank 0 sends each stored state to the members that hold it, and
    the best state to its owner."""
    comm, pop = search.comm, search.population
    keys = comm.bcast(sorted(ck["states"], key=int) if comm.is_root else None)
    for key in keys + ["best"]:
        sid = BEST_EVER if key == "best" else int(key)
        saved = None
        if comm.is_root:
            entry = ck["best"] if key == "best" else ck["states"][key]
            saved = Saved(header_from_json(entry["header"]), np.asarray(entry["bytes"], dtype=np.uint8))
        keep_on = pop.owner(search.best.member) if key == "best" else None
        kept = share_state(comm, pop.buffer, 0, saved, [m for m in pop.members if ids[m.index] == sid], keep_on)
        if kept is not None:
            search.best.state = kept


def state_ids(sources: np.ndarray) -> np.ndarray:
    """Which stored state each member holds: its own index, its donor's, or BEST_EVER."""
    return np.array([int(s) for s in sources], dtype=np.int64)
