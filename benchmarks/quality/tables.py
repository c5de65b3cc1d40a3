"""The benchmark's tables and figures, from the stored cells (plain JSON)."""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hsmpi.cli.report import pyplot


def load_cells(out: str, keep: Callable[[dict[str, Any]], bool] | None = None
               ) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(task, method) -> seed -> stored cell, of the cells whose settings `keep` accepts (None: all)."""
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    # Labels may hold a slash (hsmpi/m5), so cells sit one or two folders deep: search them all.
    for path in sorted(glob.glob(os.path.join(out, "cells", "**", "seed*.json"), recursive=True)):
        with open(path) as f:
            c = json.load(f)
        s = c["settings"]
        if keep is None or keep(s):
            cells.setdefault((s["task"], s["method"]), {})[int(s["seed"])] = c
    return cells


CSV_COLUMNS = ("task", "method", "seed", "test_loss", "seconds")  # cells.csv's header, read back by compare.py


def write_csv(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], path: str) -> int:
    """Every cell as one row (task, method, seed, test loss, seconds to the millisecond: two methods' cells
    can differ by less than a hundredth), sorted, so that a later run can be compared with this one cell by
    cell; returns the number of rows."""
    rows = sorted((task, method, seed, c["test"], c["seconds"])
                  for (task, method), by_seed in cells.items() for seed, c in by_seed.items())
    with open(path, "w") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        f.writelines(f"{t},{m},{s},{test!r},{sec:.3f}\n" for t, m, s, test, sec in rows)
    return len(rows)


def finite(values: list[float]) -> np.ndarray:
    """The values as an array, a NaN or infinite value (a diverged run) as +inf: the worst, and still ranked."""
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a), a, np.inf)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN without scipy or with no differences)."""
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        return math.nan
    import warnings

    d = a - b
    d = d[np.isfinite(d)]
    if len(d) == 0 or np.all(d == 0):
        return math.nan
    with warnings.catch_warnings():  # small samples: scipy warns that it falls back to an approximation
        warnings.simplefilter("ignore")
        return float(wilcoxon(d).pvalue)


def _q(values: np.ndarray) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def task_table(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], task: str, methods: list[str],
               reference: str = "hsmpi", key: str = "test") -> list[str]:
    """Markdown rows: one per method, compared with `reference` on the seeds both have."""
    ref = cells.get((task, reference), {})
    rows = ["| method | seeds | median test loss | IQR (25%-75%) | IQR width | hsmpi better on | Wilcoxon p "
            "| epochs | wall-clock s (ranks) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in methods:
        m, _, which = name.partition("#")  # "hsmpi#ensemble_test": hsmpi's population average
        which = which or key
        runs = cells.get((task, m), {})
        if not runs:
            continue
        seeds = sorted(runs)
        v = finite([_value(runs[s], which) for s in seeds])
        q25, q50, q75 = _q(v)
        shared = [s for s in seeds if s in ref]
        if name != reference and shared:
            wins, _, p = paired_counts(ref, runs, key, which)
            better = f"{wins}/{len(shared)}"
            pval = f"{p:.3f}" if math.isfinite(p) else "n/a"
        else:
            better, pval = "-", "-"
        epochs = int(np.median([runs[s]["epochs"] for s in seeds]))
        secs = float(np.median([runs[s]["seconds"] for s in seeds]))
        ranks = int(np.median([runs[s]["ranks"] for s in seeds]))
        label = f"{m} (population average)" if which == "ensemble_test" else m
        rows.append(f"| {label} | {len(seeds)} | {q50:.4g} | {q25:.4g}-{q75:.4g} | {q75 - q25:.3g} | {better} | {pval} "
                    f"| {epochs} | {secs:.1f} ({ranks}) |")
    return rows


def _value(cell: dict[str, Any], key: str) -> float:
    if key == "test":
        return float(cell["test"])
    return float(cell["extra"].get(key, math.nan))


def summary_rows(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: list[str], methods: list[str],
                 paired: bool = False) -> list[str]:
    """One line per method: its median test loss on each task, relative to hsmpi's (hsmpi / method); with
    `paired`, the seeds where hsmpi is better / worse and the Wilcoxon p instead (the docs' tables)."""
    head = "| method | " + " | ".join(tasks) + " |"
    rows = [head, "|---|" + "---|" * len(tasks)]
    for m in methods:
        parts = []
        for t in tasks:
            runs, ref = cells.get((t, m), {}), cells.get((t, "hsmpi"), {})
            if not runs:
                parts.append("-")
                continue
            med = float(np.median(finite([runs[s]["test"] for s in runs])))
            rel = ""
            if ref and m != "hsmpi" and paired:
                better, worse, p = paired_counts(ref, runs)
                rel = f" ({better}/{worse}, {format_p(p)})"
            elif ref and m != "hsmpi":
                rmed = float(np.median(finite([ref[s]["test"] for s in ref])))
                rel = f" ({(rmed / med - 1) * 100:+.0f}%)" if med > 0 and math.isfinite(med) else ""
            parts.append(f"{med:.4g}{rel}")
        rows.append(f"| {m} | " + " | ".join(parts) + " |")
    return rows


def format_p(p: float) -> str:
    """A p-value as the docs print it: three decimals below 0.1 (at most 0.099, so that a p below the goal's
    level never reads as 0.100), two above, `<0.001`, `n/a` where undefined."""
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{min(p, 0.099):.3f}" if p < 0.1 else f"{p:.2f}"


SIGNIFICANT = 0.1  # the goal's level: a Wilcoxon p below it, with more seeds on one side, separates two methods


def paired_values(ref: dict[int, dict[str, Any]], runs: dict[int, dict[str, Any]], ref_key: str = "test",
                  key: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The reference's and the method's values on the seeds both ran, in seed order (`finite`)."""
    shared = sorted(set(ref) & set(runs))
    return finite([_value(ref[s], ref_key) for s in shared]), finite([_value(runs[s], key) for s in shared])


def paired_counts(ref: dict[int, dict[str, Any]], runs: dict[int, dict[str, Any]], ref_key: str = "test",
                  key: str = "test") -> tuple[int, int, float]:
    """Seeds where the reference is better and worse than the method, and the Wilcoxon p, on the shared seeds."""
    a, b = paired_values(ref, runs, ref_key, key)
    return int((a < b).sum()), int((a > b).sum()), wilcoxon_p(a, b)


def separates(better: int, worse: int, p: float) -> int:
    """+1: the reference is significantly better; -1: significantly worse; 0: neither."""
    if not (math.isfinite(p) and p < SIGNIFICANT) or better == worse:
        return 0
    return 1 if better > worse else -1


def lowest_share(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], task: str, methods: list[str],
                 reference: str = "hsmpi", draws: int = 2000, size: int | None = None) -> float:
    """The share of resampled seed sets on which `reference` has the lowest median test loss of `methods` (a tie
    is not the lowest): `size` seeds (default: as many as there are) drawn with replacement from those every
    method ran, the same draw for every method. It says how firmly "the lowest median" holds; among methods
    within a few percent of one another, at 20 seeds, it is often a toss. NaN with fewer than two shared seeds
    or no other method."""
    if reference not in methods or not cells.get((task, reference)):
        return math.nan
    runs = [cells[(task, reference)]] + [cells[(task, m)] for m in methods if m != reference and cells.get((task, m))]
    if len(runs) < 2:
        return math.nan
    shared = sorted(set.intersection(*(set(r) for r in runs)))
    if len(shared) < 2:
        return math.nan
    x = np.stack([finite([r[s]["test"] for s in shared]) for r in runs])  # (methods, seeds)
    draw = np.random.default_rng(0).integers(0, len(shared), size=(draws, size or len(shared)))
    medians = np.median(x[:, draw], axis=2)  # (methods, draws)
    return float((medians[0] < medians[1:].min(axis=0)).mean())


def median_and_goal_sections(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: list[str],
                             methods: list[str], paired: bool = False) -> list[str]:
    """Markdown: the median test loss per task and method, then hsmpi against each method (`goal_rows`)."""
    brackets = ("the seeds where hsmpi is better / worse, and the Wilcoxon p" if paired else
                "hsmpi's median relative to the method's; negative: hsmpi's is lower")
    lines = [f"## Median test loss per task (in brackets: {brackets})", ""]
    lines += summary_rows(cells, tasks, methods, paired)
    lines += ["", f"## hsmpi against each method (Wilcoxon p < {SIGNIFICANT} on the paired seeds)", ""]
    return lines + goal_rows(cells, tasks, methods)


def goal_rows(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: list[str], methods: list[str],
              reference: str = "hsmpi", timed_against: str = "propulate") -> list[str]:
    """Markdown: the reference against the other methods, criterion by criterion, per task and in total:
    the lowest median, which methods are significantly better or worse (Wilcoxon p < SIGNIFICANT on the
    shared seeds), the share of resampled seed sets in which its median is the lowest (`lowest_share`), its
    IQR against that of the method with the lowest median of the others, and its
    median seconds per cell against `timed_against`'s."""
    others = [m for m in methods if m != reference]
    rows = [f"| task | lowest median | {reference}'s median the lowest in (resamples of the seeds) "
            f"| {reference} significantly better than | significantly better than {reference} "
            f"| IQR width: {reference}, lowest other's "
            f"| seconds per cell: {reference}, {timed_against} |", "|---|---|---|---|---|---|---|"]
    ahead = {m: 0 for m in others}
    behind = {m: 0 for m in others}
    counted = lowest_count = narrower = 0
    for task in tasks:
        ref = cells.get((task, reference), {})
        present = [m for m in others if cells.get((task, m))]
        if not ref or not present:
            continue
        counted += 1
        values = {m: finite([c["test"] for c in cells[(task, m)].values()]) for m in [reference] + present}
        medians = {m: float(np.median(v)) for m, v in values.items()}
        lowest = min(medians, key=lambda m: (medians[m], m == reference))  # a tie is not the lowest
        lowest_count += lowest == reference
        wins, losses = [], []
        for m in present:
            sign = separates(*paired_counts(ref, cells[(task, m)]))
            if sign > 0:
                wins.append(m)
                ahead[m] += 1
            elif sign < 0:
                losses.append(m)
                behind[m] += 1
        best_other = min(present, key=lambda m: medians[m])
        width = {m: _q(values[m])[2] - _q(values[m])[0] for m in (reference, best_other)}
        narrower += width[reference] <= width[best_other] * (1 + 1e-9)  # equal up to rounding: no wider
        seconds = [float(np.median([c["seconds"] for c in cells.get((task, m), {}).values()] or [math.nan]))
                   for m in (reference, timed_against)]
        share = lowest_share(cells, task, [reference] + present, reference)
        rows.append(f"| {task} | {lowest} ({medians[lowest]:.4g}) | {share:.0%} | {', '.join(wins) or 'none'} "
                    f"| {', '.join(losses) or 'none'} | {width[reference]:.3g}, {width[best_other]:.3g} "
                    f"({best_other}) | {seconds[0]:.1f}, {seconds[1]:.1f} |")
    rows += ["", f"Over {counted} tasks: {reference} has the lowest median on {lowest_count}, an IQR no wider than "
             f"the lowest other method's on {narrower}. Tasks where {reference} is significantly better than / "
             "worse than each method:", ""]
    rows += [f"- {m}: {ahead[m]} / {behind[m]}" for m in others]
    return rows


def curves(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: list[str], methods: list[str],
           path: str) -> str | None:
    """Median best-so-far validation loss against cumulative epochs, one panel per task."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in methods:
            runs = cells.get((task, m), {})
            if not runs:
                continue
            budget = max(max(c[0] for c in r["curve"]) for r in runs.values() if r["curve"])
            grid = np.linspace(1, budget, 200)
            ys = []
            for r in runs.values():
                pts = np.asarray(r["curve"], dtype=float)
                if len(pts) == 0:
                    continue
                idx = np.searchsorted(pts[:, 0], grid, side="right") - 1
                ys.append(np.where(idx >= 0, pts[np.clip(idx, 0, None), 1], np.nan))
            stack = np.asarray(ys, dtype=float)
            stack[~np.isfinite(stack)] = np.nan
            y = np.array([np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in stack.T])
            style = "-" if m.startswith("hsmpi") else "--"
            ax.plot(grid, y, style, lw=2 if m == "hsmpi" else 1.2, label=m)
        ax.set(title=task, xlabel="epochs spent (all trials/members)", ylabel="best validation loss so far",
               yscale="log")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_1b(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], seed: int, path: str,
              against: str = "hyperopt-tpe") -> str | None:
    """regression1d: the test function with the best networks of hsmpi and of a baseline (the paper's Fig. 1b)."""
    plt = pyplot()
    if plt is None:
        return None
    from hsmpi.tasks.regression1d import Regression1D

    hs, base = cells.get(("regression1d", "hsmpi"), {}).get(seed), cells.get(("regression1d", against), {}).get(seed)
    if hs is None or base is None or not hs.get("prediction") or not base.get("prediction"):
        return None
    _, val, test = Regression1D().data(seed)
    x, y = test.tensors[0].numpy().ravel(), test.tensors[1].numpy().ravel()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(val.tensors[0].numpy().ravel(), val.tensors[1].numpy().ravel(), ".", color="lightgrey",
            label="validation data (noisy)")
    ax.plot(x, y, "k-", lw=2, label="test function")
    ax.plot(x, hs["prediction"], "-", color="tab:red", label=f"hsmpi best (test loss {hs['test']:.2g})")
    ax.plot(x, base["prediction"], "--", color="tab:blue", label=f"{against} best (test loss {base['test']:.2g})")
    ax.set(xlabel="x", ylabel="y", title=f"regression1d, seed {seed}: best network of each method")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
