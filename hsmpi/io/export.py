"""Plain PyTorch state dicts of the best networks, beside the results file (rank 0 only).

`best.pt` is the member hsmpi returns (the last session's best, or the best ever with elitism; what `test/best_loss`
reports); `top1.pt` ... `topK.pt` are the final population's K best members
by their last validation loss (or, for a task that selects on a metric, by
that objective), described in `top.json`.  Load one with
`model.load_state_dict(torch.load(path))` (tensors only: `weights_only=True` works).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from hsmpi import text


def _save(path: str, weights: dict[str, np.ndarray]) -> None:
    tmp = path + ".tmp"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}, tmp)
    os.replace(tmp, path)


def export_top(out: str, record: dict[str, Any], k: int) -> list[str]:
    """Write best.pt, top1.pt ... topK.pt and top.json; return the paths written."""
    written = [os.path.join(out, "best.pt")]
    _save(written[0], record["best"]["weights"])
    pop = record["population"]
    val = np.asarray(pop["val_loss"], dtype=float)
    score = np.asarray(pop.get("score", val), dtype=float)  # what selection compares: lower is better
    order = np.argsort(np.where(np.isfinite(score), score, np.inf), kind="stable")[:k]
    described = []
    for rank, i in enumerate(order, start=1):
        path = os.path.join(out, f"top{rank}.pt")
        _save(path, {name: w[i] for name, w in pop["weights"].items()})
        hp = {n: (v[i].item() if hasattr(v[i], "item") else v[i]) for n, v in pop["hparams"].items()}
        hp = {n: (v.decode() if isinstance(v, bytes) else v) for n, v in hp.items()}
        entry = {"file": os.path.basename(path), "member": int(i),
                 "val_loss": float(val[i]) if math.isfinite(val[i]) else None, "hparams": hp}
        if "objective" in pop:
            entry[record["best"]["objective"]] = float(pop["objective"][i]) if math.isfinite(pop["objective"][i]) \
                else None
        described.append(entry)
        written.append(path)
    with open(os.path.join(out, "top.json"), "w") as f:
        best = {"file": "best.pt", "member": int(record["best"]["member"]),
                "val_loss": float(record["best"]["val_loss"]), "session": int(record["best"]["session"]) + 1,
                "hparams": record["best"]["hparams"]}
        if "objective" in record["best"]:
            best[record["best"]["objective"]] = float(record["best"]["objective_value"])
        f.write(text.dumps({"best": best, "top": described}, indent=1))
    return written
