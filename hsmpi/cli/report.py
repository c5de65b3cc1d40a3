"""`python -m hsmpi report RESULTS [--out FOLDER]`: a summary table and plots of a run.

RESULTS is a results.h5, or a checkpoint.h5 (or the run's folder) of a run
still in progress.  The table (best losses, each session's winner and its
hyperparameters, rank 0's time per phase) is printed and written as
`summary.md`; with matplotlib installed (`pip install 'hsmpi[report]'`) the
plots go in as PNGs: `losses.png` (every member's training and validation
loss at each session's end, session boundaries marked, winners circled) and
`hparams.png` (every member's hyperparameters per session, the winners' path
highlighted).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import h5py
import numpy as np

from hsmpi.algorithm.plan import RUNG
from hsmpi.config import RETURNED
from hsmpi.engine.history import PHASES, History
from hsmpi.io import checkpoint, hdf5
from hsmpi.tasks import Objective
from hsmpi.text import say


def load_history(path: str) -> dict[str, Any]:
    """The history of a results file or a checkpoint, as arrays (hparams: name -> (m, S) list)."""
    if os.path.isdir(path):
        results = os.path.join(path, "results.h5")
        if os.path.exists(results):
            path = results
        elif not any(os.path.exists(os.path.join(path, n)) for n in (checkpoint.LATEST, checkpoint.BACKUP)):
            raise FileNotFoundError(
                f"no results.h5 and no checkpoint in {path} yet (a run writes its first checkpoint after about "
                "a second of training, see --checkpoint-interval; lineage.jsonl has every session so far)")
        else:
            return _from_checkpoint(path)
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") == "hsmpi-results":
            out = _arrays(hdf5.read_group(f["history"]))
            out["test"] = {k: float(f[f"test/{k}"][()]) for k in ("best_loss", "ensemble_loss", "greedy_loss")
                           if f"test/{k}" in f}
            if "test/returned" in f:  # written since --returns
                out["test"]["returned"] = f["test/returned"][()].decode()
            if "test/returned_why" in f:  # --returns auto, since 2026-12-05
                out["test"]["returned_why"] = f["test/returned_why"][()].decode()
            out["task"], out["source"] = str(f.attrs["task"]), "results"
            return out
    return _from_checkpoint(path)


def _from_checkpoint(path: str) -> dict[str, Any]:
    """The history a checkpoint holds (a file, or a folder: its latest checkpoint, else the backup)."""
    state, _ = checkpoint.load(path, warn=lambda s: say(s, sys.stderr))
    out = _arrays(state["history"])
    out["test"], out["task"], out["source"] = {}, str(state["task"]), "checkpoint (run in progress)"
    return out


def _arrays(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored history (either file's) as the arrays the summary and the plots read; times are rank 0's."""
    h = History.from_state_dict(stored)
    names = list(h.hparams[0][0]) if h.hparams else []
    return {"train_loss": np.array(h.train_loss, dtype=float), "val_loss": np.array(h.val_loss, dtype=float),
            "winner": np.array(h.winner), "winner_loss": np.array(h.winner_loss, dtype=float),
            "epochs": np.array(h.epochs), "hparams": {n: [[hp[n] for hp in row] for row in h.hparams] for n in names},
            "time": {p: np.array([t[0][j] for t in h.time]) for j, p in enumerate(PHASES)},
            "objective": h.objective, "winner_objective": np.array([h.objective.value(v) for v in h.winner_score]),
            "metrics": {n: np.array(rows, dtype=float) for n, rows in h.metrics.items()},
            "rung": [n.startswith(RUNG) for n in h.note]}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def summary(h: dict[str, Any]) -> str:
    names = list(h["hparams"])
    lines = [f"# hsmpi run: {h['task']} ({h['source']})", ""]
    if h["test"]:
        returned, why = h["test"].get("returned", "member"), h["test"].get("returned_why")
        greedy = (f", greedy ensemble {h['test']['greedy_loss']:.5g}" if "greedy_loss" in h["test"] else "")
        lines += [f"test loss: best member {h['test']['best_loss']:.5g}, population average "
                  f"{h['test']['ensemble_loss']:.5g}{greedy} (the run returned the {RETURNED.get(returned, returned)})",
                  ""]
        if why:
            lines[-1:-1] = [f"--returns auto: {why}"]
    objective: Objective = h.get("objective") or Objective()
    by_metric = not objective.is_loss
    chosen = np.array([objective.score(v) for v in h["winner_objective"]]) if by_metric else h["winner_loss"]
    best = int(np.argmin(np.where(np.isfinite(chosen), chosen, np.inf)))
    if by_metric:
        lines += [f"winners chosen by {objective.describe()}: best {objective.name} "
                  f"{h['winner_objective'][best]:.5g} in session {best + 1} (member {h['winner'][best]})"]
    else:
        lines += [f"best validation loss {h['winner_loss'][best]:.5g} in session {best + 1} "
                  f"(member {h['winner'][best]})"]
    metric_names = list(h.get("metrics", {}))
    unit = "step" if any(h.get("rung", [])) else "session"
    lines += ["", f"| {unit} | epochs done | winner | best val | " + "".join(f"val {n} | " for n in metric_names)
              + " | ".join(names) + " | " + " | ".join(f"{p} s" for p in h["time"]) + " |",
              "|" + "---|" * (4 + len(metric_names) + len(names) + len(h["time"]))]
    done = np.cumsum(h["epochs"])
    for k, w in enumerate(h["winner"]):
        hp = " | ".join(_fmt(h["hparams"][n][k][w]) for n in names)
        metrics = "".join(f"{h['metrics'][n][k][w]:.5g} | " for n in metric_names)
        times = " | ".join(f"{h['time'][p][k]:.3f}" for p in h["time"])
        step = f"{k + 1} (rung)" if k < len(h.get("rung", [])) and h["rung"][k] else str(k + 1)
        lines.append(f"| {step} | {done[k]} | {w} | {h['winner_loss'][k]:.5g} | {metrics}{hp} | {times} |")
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (the Agg backend), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plots(h: dict[str, Any], folder: str) -> list[str]:
    """losses.png and hparams.png; [] when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return []
    done = np.cumsum(h["epochs"])
    m, s = h["val_loss"].shape
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for i in range(s):
        ax.plot(done, h["train_loss"][:, i], color="tab:blue", alpha=0.35, lw=1, marker=".",
                label="training loss (each member)" if i == 0 else None)
        ax.plot(done, h["val_loss"][:, i], color="tab:orange", alpha=0.35, lw=1, marker=".",
                label="validation loss (each member)" if i == 0 else None)
    ax.plot(done, h["winner_loss"], "o-", color="tab:red", label="winner's validation loss")
    for x in done[:-1]:
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="epochs", ylabel="loss", yscale="log", title=f"{h['task']}: loss of every member per session")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(folder, "losses.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    names = list(h["hparams"])
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), sharex=True, squeeze=False)
    for ax, n in zip(axes[:, 0], names):
        values = h["hparams"][n]
        numeric = all(isinstance(v, (int, float, np.number)) for row in values for v in row)
        if not numeric:
            ax.text(0.5, 0.5, f"{n}: categorical", ha="center", transform=ax.transAxes)
            continue
        arr = np.array(values, dtype=float)
        for i in range(s):
            ax.plot(done, arr[:, i], ".", color="tab:grey", alpha=0.6)
        ax.plot(done, arr[np.arange(m), h["winner"]], "o-", color="tab:red", label="winner")
        if (arr > 0).all() and arr.max() / arr.min() > 50:
            ax.set_yscale("log")
        ax.set_ylabel(n)
        ax.legend(loc="best")
    axes[-1, 0].set_xlabel("epochs")
    fig.suptitle(f"{h['task']}: hyperparameters per session (grey: every member, red: the winner)")
    fig.tight_layout()
    written.append(os.path.join(folder, "hparams.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m hsmpi report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results.h5, checkpoint.h5, or a run's output folder")
    p.add_argument("--out", help="folder for summary.md and the PNGs (default: RESULTS' folder/report)")
    try:
        ns = p.parse_args(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        h = load_history(ns.results)
    except (OSError, KeyError, ValueError, checkpoint.CheckpointError) as err:
        say(f"hsmpi: error: cannot read {ns.results}: {err}", sys.stderr)
        return 2
    base = ns.results if os.path.isdir(ns.results) else os.path.dirname(os.path.abspath(ns.results))
    folder = ns.out or os.path.join(base, "report")
    os.makedirs(folder, exist_ok=True)
    text = summary(h)
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write(text)
    say(text)
    written = plots(h, folder)
    say("plots: " + (", ".join(written) if written else "none (pip install matplotlib for PNGs)"))
    return 0
