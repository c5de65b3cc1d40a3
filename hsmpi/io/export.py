"""Plain PyTorch state dicts of the best networks, beside the results file.

`best.pt` is the best member (the last session's best, or the best ever with elitism; what
`test/best_loss` reports), written by rank 0.  When the run returns the population's average
(`--returns`), top.json's `average` names the members it holds and their weights (`counts`), whose
weights are in results.h5
(`hsmpi.engine.average.Average.from_results` builds it).  `top1.pt` ... `topK.pt`
are the final population's K best
members by their last validation loss (or, for a task that selects on a metric, by that objective,
ties ranked as `--tie-break` says), each
written by the rank that owns it, and described in `top.json` (rank 0).  Load one with
`model.load_state_dict(torch.load(path))` (tensors only: `weights_only=True` works).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from hsmpi import text


def save_weights(path: str, weights: dict[str, np.ndarray]) -> None:
    """A state dict of tensors at `path`, written to a temporary name and renamed."""
    tmp = path + ".tmp"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}, tmp)
    os.replace(tmp, path)


def top_order(score: np.ndarray, k: int) -> list[int]:
    """The K members with the lowest scores (what selection compares; non-finite last), best first."""
    score = np.asarray(score, dtype=float)
    return [int(i) for i in np.argsort(np.where(np.isfinite(score), score, np.inf), kind="stable")[:k]]


def top_file(out: str, place: int) -> str:
    """Where the place-th best member (1-based) goes."""
    return os.path.join(out, f"top{place}.pt")


def describe(record: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """top.json's content: the returned member and each exported one, with their values and losses."""
    pop = record["population"]
    val = np.asarray(pop["val_loss"], dtype=float)
    described = []
    for place, i in enumerate(order, start=1):
        hp = {n: (v[i].item() if hasattr(v[i], "item") else v[i]) for n, v in pop["hparams"].items()}
        hp = {n: (v.decode() if isinstance(v, bytes) else v) for n, v in hp.items()}
        entry = {"file": os.path.basename(top_file("", place)), "member": int(i),
                 "val_loss": float(val[i]) if math.isfinite(val[i]) else None, "hparams": hp}
        if "objective" in pop:
            value = float(pop["objective"][i])
            entry[record["best"]["objective"]] = value if math.isfinite(value) else None
        described.append(entry)
    best = {"file": "best.pt", "member": int(record["best"]["member"]),
            "val_loss": float(record["best"]["val_loss"]), "session": int(record["best"]["session"]) + 1,
            "hparams": record["best"]["hparams"]}
    if "objective" in record["best"]:
        best[record["best"]["objective"]] = float(record["best"]["objective_value"])
    described_all: dict[str, Any] = {"returned": record["test"].get("returned", "member"), "best": best}
    if "average" in record:
        described_all["average"] = {"file": "results.h5", **record["average"]}
    return {**described_all, "top": described}


def write_described(out: str, record: dict[str, Any], order: list[int]) -> None:
    """Rank 0: best.pt and top.json."""
    save_weights(os.path.join(out, "best.pt"), record["best"]["weights"])
    with open(os.path.join(out, "top.json"), "w") as f:
        f.write(text.dumps(describe(record, order), indent=1))
