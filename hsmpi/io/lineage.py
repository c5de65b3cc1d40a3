"""The lineage log: one JSON line per session in `<out>/lineage.jsonl` (rank 0 only).

Each line says what happened in a session: every member's hyperparameters
and losses, the winner, and what was copied to whom with which new values,
so the whole schedule reads with `jq` or `pandas.read_json(path, lines=True)`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hsmpi.engine.session import BEST_EVER, Search
from hsmpi.io import text

NAME = "lineage.jsonl"


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no inf/NaN: null means diverged


def record(search: Search, k: int) -> dict[str, Any]:
    """Session k as a plain dict (rank 0, after the session's plan)."""
    h = search.history
    sources = h.sources[k]
    members = []
    for i in range(search.population):
        s = int(sources[i])
        entry: dict[str, Any] = {"member": i, "hparams": h.hparams[k][i], "train_loss": _number(h.train_loss[k][i]),
                                 "val_loss": _number(h.val_loss[k][i])}
        if s != i:
            entry["copied_from"] = "best so far" if s == BEST_EVER else s
            entry["new_hparams"] = search.hps[i]
        members.append(entry)
    return {"session": k + 1, "epochs": int(h.epochs[k]), "epochs_done": int(sum(h.epochs[:k + 1])),
            "winner": int(h.winner[k]), "winner_val_loss": _number(h.winner_loss[k]), "note": h.note[k],
            "members": members}


def append(out: str, line: dict[str, Any]) -> None:
    """One session's line (not fsynced: `sync` runs before each checkpoint, and a resume trims to it)."""
    with open(os.path.join(out, NAME), "a") as f:
        f.write(text.dumps(line) + "\n")


def sync(out: str) -> None:
    """Make the lines written so far durable (before a checkpoint that counts on them)."""
    path = os.path.join(out, NAME)
    if os.path.exists(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def trim(out: str, sessions: int) -> None:
    """Keep the first `sessions` sessions' lines (on resume: drop what the checkpoint does not hold)."""
    path = os.path.join(out, NAME)
    if not os.path.exists(path):
        return
    def keep(line: str) -> bool:
        try:
            return bool(json.loads(line).get("session", 0) <= sessions)
        except ValueError:  # a line cut short by a crash: it is past the checkpoint anyway
            return False

    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip() and keep(line)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)
