"""A Search's whole state to a checkpoint dict and back (collective calls).

After the winner's state is shared, members that copied a donor hold exactly
the donor's state, so a checkpoint stores one copy per distinct state: one in
all for the paper's winner rule, whatever S is (see shared/NOTES.md).  Each
member's hyperparameters and random streams are stored per member, so a
resumed run continues exactly, on any number of ranks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from hsmpi import __version__
from hsmpi.algorithm.space import describe_space
from hsmpi.engine.session import BEST_EVER, Best, History, Search
from hsmpi.parallel import flatstate

CheckpointState = dict[str, Any]


def header_to_json(header: flatstate.Header) -> str:
    return json.dumps({
        "entries": [{"key": list(e.key), "dtype": e.dtype, "shape": list(e.shape), "offset": e.offset,
                     "nbytes": e.nbytes, "on_cpu": e.on_cpu} for e in header.entries],
        "scalars": [[list(k), v] for k, v in header.scalars.items()],
        "optimizer": header.optimizer, "nbytes": header.nbytes,
    })


def header_from_json(text: str) -> flatstate.Header:
    d = json.loads(text)
    entries = [flatstate.Entry(tuple(e["key"]), e["dtype"], tuple(e["shape"]), e["offset"], e["nbytes"],
                               e["on_cpu"]) for e in d["entries"]]
    scalars = {tuple(k): v for k, v in d["scalars"]}
    return flatstate.Header(entries, scalars, d["optimizer"], d["nbytes"])


def _state_ids(sources: np.ndarray) -> np.ndarray:
    """Which stored state each member holds: its own index, its donor's, or -1 (the best so far)."""
    return np.array([s if s == BEST_EVER else (i if s == i else s) for i, s in enumerate(sources)], dtype=np.int64)


def collect(search: Search, k: int) -> CheckpointState | None:
    """Everything needed to continue after session k; the dict on rank 0, None elsewhere."""
    comm = search.comm
    ids = _state_ids(search.last_sources)
    cached = search.donor_states
    # Rank 0 kept a copy of every donor's state when it was broadcast; only other kept states travel.
    wanted = [i for i in range(search.population) if ids[i] == i and i not in search.last_donors]
    local = {m.index: m for m in search.members}
    mine_states = [(i, *_packed(search, local[i])) for i in wanted if i in local]
    mine_rng = [(m.index, m.data_gen.get_state().numpy(), m.rng_state.numpy(),
                 None if m.cuda_rng_state is None else m.cuda_rng_state.cpu().numpy()) for m in search.members]
    gathered = comm.gather((mine_states, mine_rng))
    if not comm.is_root:
        return None
    assert gathered is not None
    states: dict[str, Any] = {}
    for i, (header, array) in cached.items():
        if i in set(ids.tolist()):
            states[str(i)] = {"bytes": array, "header": header_to_json(header)}
    for part, _ in gathered:
        for i, header_json, array in part:
            states[str(i)] = {"bytes": array, "header": header_json}
    rng = sorted((x for _, part in gathered for x in part), key=lambda x: x[0])
    members: dict[str, Any] = {
        "state_id": ids, "hparams": json.dumps(search.hps),
        "data_rng": np.stack([r[1] for r in rng]), "torch_rng": np.stack([r[2] for r in rng]),
    }
    if rng[0][3] is not None:
        members["cuda_rng"] = np.stack([r[3] for r in rng])
    return {
        "hsmpi_version": __version__, "next_session": k + 1, "task": search.config.task,
        "population": search.population, "config": json.dumps(search.config.to_dict()),
        "space": json.dumps(describe_space(search.space)), "best_val_loss": float(search.best_val_loss),
        "pending_selection": bool(k == len(search.schedule) - 1),
        "states": states, "members": members,
        "root_rng": {"hparams": json.dumps([r.bit_generator.state for r in search.hp_rngs]),
                     "selection": json.dumps(search.sel_rng.bit_generator.state)},
        "best": _best_state(search.best), "history": _history_state(search.history),
    }


def _packed(search: Search, member: Any) -> tuple[str, np.ndarray]:
    """A member's state for the checkpoint: its header as JSON and a copy of its packed bytes."""
    header = member.header()
    return header_to_json(header), search._pack(member, header).copy()


def _best_state(best: Best) -> dict[str, Any]:
    assert best.header is not None and best.state is not None
    return {"val_loss": float(best.val_loss), "session": best.session, "member": best.member,
            "hparams": json.dumps(best.hp), "header": header_to_json(best.header), "bytes": best.state}


def _history_state(h: History) -> dict[str, Any]:
    return {"json": json.dumps({
        "train_loss": [r.tolist() for r in h.train_loss], "val_loss": [r.tolist() for r in h.val_loss],
        "winner": h.winner, "winner_loss": h.winner_loss, "sources": [r.tolist() for r in h.sources],
        "hparams": h.hparams, "epochs": h.epochs, "time": [t.tolist() for t in h.time], "note": h.note,
    }, allow_nan=True)}


def _history_from(d: dict[str, Any]) -> History:
    j = json.loads(d["json"])
    return History(
        train_loss=[np.array(r, dtype=float) for r in j["train_loss"]],
        val_loss=[np.array(r, dtype=float) for r in j["val_loss"]],
        winner=j["winner"], winner_loss=j["winner_loss"],
        sources=[np.array(r, dtype=np.int64) for r in j["sources"]],
        hparams=j["hparams"], epochs=j["epochs"], time=[np.array(t) for t in j["time"]], note=j["note"])


def restore(search: Search, ckpt: CheckpointState | None) -> None:
    """Load a checkpoint into a Search built by `setup` (collective; `ckpt` is needed on rank 0 only)."""
    comm = search.comm
    root = comm.is_root
    assert not root or ckpt is not None
    ck: CheckpointState = ckpt if ckpt is not None else {}  # only read on rank 0
    info = comm.bcast((ck["next_session"], ck["best_val_loss"], ck["pending_selection"],
                       sorted(ck["states"], key=int)) if root else None)
    search.next_session, search.best_val_loss, search.pending_selection, state_keys = info
    ids = comm.bcast(ck["members"]["state_id"] if root else None)
    hps = json.loads(ck["members"]["hparams"]) if root else []
    mine = comm.scatter(search._per_rank(hps) if root else None)
    keys = state_keys + (["best"] if (ids == BEST_EVER).any() else [])
    for key in keys:
        src: dict[str, Any] = (ck["best"] if key == "best" else ck["states"][key]) if root else {}
        header = comm.bcast(header_from_json(src["header"]) if root else None)
        search.buffer.ensure(header.nbytes)
        array = search.buffer.array(header.nbytes)
        if root:
            array[:] = src["bytes"]
        comm.bcast_buffer(array)
        search.buffer.to_device(header.nbytes)
        sid = BEST_EVER if key == "best" else int(key)
        for m in search.members:
            if ids[m.index] == sid:
                m.adopt(header, search.buffer.device_view(), mine[m.index], search.buffer.host)
    rngs = None
    if root:
        mem = ck["members"]
        cuda = mem.get("cuda_rng")
        rngs = search._per_rank([(mem["data_rng"][i], mem["torch_rng"][i], None if cuda is None else cuda[i])
                                 for i in range(search.population)])
    for m in search.members:
        m.hp = dict(mine[m.index])
    my_rngs = comm.scatter(rngs)
    for m in search.members:
        data, own, cuda = my_rngs[m.index]
        m.data_gen.set_state(torch.from_numpy(np.array(data, dtype=np.uint8)))
        m.rng_state = torch.from_numpy(np.array(own, dtype=np.uint8))
        if cuda is not None and m.cuda_rng_state is not None:
            m.cuda_rng_state = torch.from_numpy(np.array(cuda, dtype=np.uint8))
    if root:
        assert ckpt is not None
        _restore_root(search, ck, hps)


def _restore_root(search: Search, ckpt: CheckpointState, hps: list[dict[str, Any]]) -> None:
    search.hps = hps
    for rng, state in zip(search.hp_rngs, json.loads(ckpt["root_rng"]["hparams"])):
        rng.bit_generator.state = state
    search.sel_rng.bit_generator.state = json.loads(ckpt["root_rng"]["selection"])
    b = ckpt["best"]
    search.best = Best(b["val_loss"], int(b["session"]), int(b["member"]), json.loads(b["hparams"]),
                       header_from_json(b["header"]), np.array(b["bytes"], dtype=np.uint8))
    search.history = _history_from(ckpt["history"])
