"""After the last session: the best model everywhere, test losses, the final population, the record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hsmpi.algorithm.space import HParams
from hsmpi.engine.member import Member
from hsmpi.engine.session import PHASES, Search
from hsmpi.tasks import task_loss


@dataclass
class Result:
    """What a run hands back (on every rank)."""

    best_model: torch.nn.Module
    best_hparams: HParams
    best_val_loss: float
    best_session: int  # 0-based session in which the best member was evaluated
    best_member: int
    test_loss: float  # the best member's
    ensemble_test_loss: float  # the final population's averaged prediction
    history: dict[str, Any]  # the results file's `history/` group, on rank 0 (empty elsewhere)
    path: str | None  # the results file, on rank 0


def finish(search: Search) -> tuple[Result, dict[str, Any]]:
    """After the last session: the best model to every rank, test losses, the final population.

    Returns the Result and, on rank 0, the dicts the results file is made of.
    """
    comm, task, best = search.comm, search.task, search.best
    header, hp, meta = comm.bcast((best.header, best.hp, (best.val_loss, best.session, best.member))
                                  if comm.is_root else None)
    search.buffer.ensure(header.nbytes)
    array = search.buffer.array(header.nbytes)
    if comm.is_root:
        assert best.state is not None
        array[:] = best.state
    comm.bcast_buffer(array)
    search.buffer.to_device(header.nbytes)
    c = search.config
    champion = Member.create(task, meta[2], hp, c.seed, search.device, c.independent_init, c.batch_size)
    champion.adopt(header, search.buffer.device_view(), hp, search.buffer.host)
    test_loss = champion.evaluate(search.data["test"]) if comm.is_root else math.nan
    test_loss = comm.bcast(test_loss)
    ensemble_loss, count = _ensemble_loss(search)

    record: dict[str, Any] = {}
    gathered = comm.gather([(m.index, m.weights(), m.hp) for m in search.members])
    if comm.is_root:
        assert gathered is not None
        members = sorted((x for part in gathered for x in part), key=lambda x: x[0])
        record = _record(search, members, champion, test_loss, ensemble_loss, count)
    result = Result(champion.model, dict(hp), float(meta[0]), int(meta[1]), int(meta[2]), float(test_loss),
                    float(ensemble_loss), record.get("history", {}), None)
    return result, record


def _ensemble_loss(search: Search) -> tuple[float, int]:
    """Test loss of the population's averaged prediction (non-finite members left out)."""
    task, test = search.task, search.data["test"]
    into = getattr(task, "ensemble_in", lambda out: out)
    back = getattr(task, "ensemble_out", lambda mean: mean)
    total: torch.Tensor | None = None
    count = 0
    for m in search.members:
        out = into(m.predict(test)).double()
        if torch.isfinite(out).all():
            total = out if total is None else total + out
            count += 1
    shape = tuple(search.members[0].predict(test).shape) if total is None else tuple(total.shape)
    local = np.zeros(int(np.prod(shape)) + 1)
    if total is not None:
        local[:-1] = total.cpu().numpy().ravel()
    local[-1] = count
    summed = search.comm.allreduce_sum(local)
    count = int(summed[-1])
    if count == 0:
        return math.nan, 0
    mean = torch.from_numpy(summed[:-1].reshape(shape) / count).float().to(search.device)
    with torch.no_grad():
        target = torch.cat([y for _, y in test.in_order()])
        return float(task_loss(task, back(mean), target)), count


def _record(search: Search, members: list[Any], champion: Member, test_loss: float,
            ensemble_loss: float, count: int) -> dict[str, Any]:
    """Rank 0: the results file's content as plain dicts of arrays."""
    from hsmpi.io.results import hparam_array

    h, names = search.history, list(search.space)
    history = {
        "train_loss": np.array(h.train_loss), "val_loss": np.array(h.val_loss),
        "winner": np.array(h.winner, dtype=np.int64), "winner_loss": np.array(h.winner_loss),
        "sources": np.array(h.sources, dtype=np.int64), "epochs": np.array(h.epochs, dtype=np.int64),
        "note": list(h.note),
        "hparams": {n: np.stack([hparam_array([hp[n] for hp in row]) for row in h.hparams]) for n in names},
        "time": {p: _pad([t[:, j] for t in h.time]) for j, p in enumerate(PHASES)},
    }
    best = {"val_loss": search.best.val_loss, "session": search.best.session, "member": search.best.member,
            "weights": champion.weights(), "hparams": dict(search.best.hp)}
    keys = list(members[0][1])
    population = {
        "weights": {k: np.stack([w[k] for _, w, _ in members]) for k in keys},
        "hparams": {n: hparam_array([hp[n] for _, _, hp in members]) for n in names},
        "val_loss": h.val_loss[-1],
    }
    test = {"best_loss": test_loss, "ensemble_loss": ensemble_loss, "ensemble_members": count}
    return {"history": history, "best": best, "population": population, "test": test}


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of per-rank times as one (sessions, ranks) array; NaN where a resumed run had fewer ranks."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
