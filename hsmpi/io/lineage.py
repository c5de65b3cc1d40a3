"""The lineage log: one JSON line per session in `<out>/lineage.jsonl` (rank 0 only).

Each line says what happened in a session: every member's hyperparameters
and losses, the winner, and what was copied to whom with which new values,
so the whole schedule reads with `jq` or `pandas.read_json(path, lines=True)`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hsmpi import text

NAME = "lineage.jsonl"


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
