"""`--returns auto`'s margin, replayed on runs already made: what the returned model's test loss would have been
with another margin, read from the results files alone (no training).

A results file of a run with `--returns auto` holds both candidates' test losses (`test/best_loss`, the best
member's; `test/ensemble_loss`, the population average's) and the two scores the rule compared
(`test/ensemble_val_loss` and `test/member_val_cv`). So the rule "the average when its score is below the
member rule's by more than the margin" can be replayed for any margin.  Runs that select on a metric
(`--objective` other than `loss`, or by default a task whose objective is not its loss) hold scores of that
metric and are left out.

    python -m benchmarks.quality.margins 'bench-out/runs/*/hsmpi/seed*/results.h5' --margins 0.05 0.02 0

`--paired Z ...` replays a rule that weighs the difference against its noise instead: the final population is
rebuilt from the file's weights, and on the validation split the average's per-sample losses are paired with
the cross-validated member rule's (on each of the 5 folds, the member best on the other 4).  The average is
returned unless the member rule is better by more than Z standard errors of the mean difference (Z = 0: the
average when it is better at all; Z > 0 favours the average; Z < 0 asks more of it).

`--disagreement K ...` replays a margin that shrinks as the final population's members disagree more on the
training split (see `disagreement`): the average when its score is below the member rule's by more than
0.05 - K x the disagreement.  `--seeds FIRST END` keeps seeds FIRST to END - 1 (to choose K on some seeds and
confirm it on others).

`--returned` compares what each run returned (`test/returned_loss`) with the margin rule replayed: since
2026-12-06 `auto` returns the greedy ensemble where AUTO_FEW_SAMPLES or more samples judge, and the margin
rule below that, so on runs made since this is the greedy ensemble against the rule before it.

Every replayed rule applies the default's first step as it is: a judged split of class labels with fewer
than AUTO_FEW_SAMPLES samples returns the average (unless AUTO_SPOILED trips).  `--few N ...` replays that
threshold instead (`--few 0`: the margin alone, the rule before 2026-12-05).  Files written before
`test/judged_classes` existed get the judged split's size and kind from the task's data, and the members' median
from `population/val_loss`.
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict
from collections.abc import Callable

import h5py
import numpy as np
import torch

from benchmarks.quality.tables import format_p, wilcoxon_p
from hsmpi.engine.average import AUTO_FEW_SAMPLES, AUTO_MARGIN, AUTO_SPOILED, FOLDS
from hsmpi.engine.data import Data
from hsmpi.tasks import load_task, task_loss

Run = tuple[float, float, float, float, int, float, bool]


def read(pattern: str, paths: dict[tuple[str, int, int], str] | None = None) -> dict[tuple[str, int], dict[int, Run]]:
    """(task, S) -> seed -> (average's score, member rule's score, member's test loss, average's test loss, the
    judged split's size, the members' median score there, whether it holds class labels); `paths`, when given,
    gets each kept run's file under (task, S, seed)."""
    runs: dict[tuple[str, int], dict[int, Run]] = defaultdict(dict)
    for path in sorted(glob.glob(pattern)):
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
            test = f.get("test")
            if config["returns"] != "auto" or test is None or "member_val_cv" not in test:
                continue
            if (config["objective"] or getattr(load_task(config["task"]), "objective", "loss")) != "loss":
                continue  # its scores are of a metric, not the loss
            scores = [float(test[n][()]) for n in ("ensemble_val_loss", "member_val_cv", "best_loss", "ensemble_loss")]
            if "judged_classes" in test:
                samples, median = int(test["judged_samples"][()]), float(test["member_val_median"][()])
                classes = bool(test["judged_classes"][()])
            else:  # written before they were
                samples, classes = _judged_split(config)
                last = f["population/val_loss"][()]
                median = float(np.median(last[np.isfinite(last)])) if np.isfinite(last).any() else np.inf
            runs[config["task"], config["population"]][config["seed"]] = (  # type: ignore[assignment]
                *scores, samples, median, classes)
            if paths is not None:
                paths[config["task"], config["population"], config["seed"]] = path
    return runs


def _judged_split(config: dict[str, object]) -> tuple[int, bool]:
    """The size of the split a run's returned model was judged on (validation, or with --holdout its held-back
    part, as hsmpi.engine.population holds it back), and whether its targets are class labels."""
    _, val, _ = load_task(str(config["task"])).data(config["seed"])  # type: ignore[attr-defined]
    held = int(round(float(config.get("holdout") or 0.0) * len(val)))  # type: ignore[arg-type]
    target = val[0][1] if not hasattr(val, "tensors") else val.tensors[1]
    return held if held > 0 else len(val), not torch.as_tensor(target).is_floating_point()


def default_rule(a: np.ndarray, few: float = AUTO_FEW_SAMPLES, margin: float = AUTO_MARGIN) -> np.ndarray:
    """Per run (rows of `read`'s tuples), whether `--returns auto` returns the average: hsmpi.engine.average's
    rule with its threshold `few` and its `margin`."""
    step = (a[:, 6] > 0) & (a[:, 4] < few)
    kept = (a[:, 5] > 0) & (a[:, 5] < a[:, 0] / AUTO_SPOILED)
    return np.where(step, ~kept, _relative(a) < -margin)


def _population(path: str) -> tuple[dict[str, object], object, dict[str, np.ndarray]]:
    """(config, task, the final population's weights) of results file `path`."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["config"])
        weights = {n: f["population/weights"][n][()] for n in f["population/weights"]}
    return config, load_task(config["task"]), weights


def _outputs(config: dict[str, object], task: object, weights: dict[str, np.ndarray], split: object
             ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Every member's outputs on `split`, their average's (every member averaged, as without --average-top),
    and the split's targets."""
    data = Data(split, torch.device("cpu"))  # type: ignore[arg-type]
    inputs, targets = [torch.cat(t) for t in zip(*data.in_order())]
    into = getattr(task, "ensemble_in", lambda out: out)
    back = getattr(task, "ensemble_out", lambda mean: mean)
    outputs = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for i in range(int(config["population"])):  # type: ignore[call-overload]
            model = task.model()  # type: ignore[attr-defined]
            model.load_state_dict({n: torch.from_numpy(np.asarray(w[i])) for n, w in weights.items()})
            outputs.append(model.eval()(inputs))
        mean = back(torch.stack([into(o).double() for o in outputs]).mean(0).float())
    return outputs, mean, targets


def paired(path: str) -> tuple[float, float]:
    """The mean over the validation split of (average's loss - member rule's loss) per sample, and its standard
    error, from the final population in results file `path`."""
    config, task, weights = _population(path)
    _, val, _ = task.data(config["seed"])  # type: ignore[attr-defined]
    outputs, mean, targets = _outputs(config, task, weights, val)

    def per_sample(out: torch.Tensor) -> np.ndarray:
        return np.array([float(task_loss(task, out[j:j + 1], targets[j:j + 1])) for j in range(len(targets))])
    losses = np.stack([per_sample(o) for o in outputs])  # members x samples
    averaged = per_sample(mean)
    rule = np.empty(len(targets))
    for fold in range(FOLDS):
        mask = np.arange(len(targets)) % FOLDS == fold
        rule[mask] = losses[int(np.argmin(losses[:, ~mask].sum(axis=1))), mask]
    d = averaged - rule
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def disagreement(path: str) -> float:
    """How far the final population's members disagree, on the training split: (the members' mean loss - their
    average's loss) / the average's loss.  For a squared error the numerator is the members' spread around the
    average, which needs no labels (the ambiguity of an ensemble)."""
    config, task, weights = _population(path)
    train, _, _ = task.data(config["seed"])  # type: ignore[attr-defined]
    outputs, mean, targets = _outputs(config, task, weights, train)
    with torch.no_grad():
        members = float(np.mean([float(task_loss(task, o, targets)) for o in outputs]))
        averaged = float(task_loss(task, mean, targets))
    return (members - averaged) / averaged


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.margins", description=__doc__.split("\n")[0])
    p.add_argument("pattern", help="a glob of results files (quote it)")
    p.add_argument("--margins", nargs="+", type=float, default=[AUTO_MARGIN, 0.02, 0.0, -0.01])
    p.add_argument("--paired", nargs="+", type=float, metavar="Z", help="replay the paired rule at these Z")
    p.add_argument("--disagreement", nargs="+", type=float, metavar="K",
                   help="replay the margin that shrinks with the members' disagreement, at these K")
    p.add_argument("--few", nargs="+", type=float, metavar="N",
                   help="replay the default rule with these thresholds of judged samples (0: the margin alone)")
    p.add_argument("--seeds", nargs=2, type=int, metavar=("FIRST", "END"), help="only seeds FIRST to END - 1")
    p.add_argument("--returned", action="store_true",
                   help="the runs' returned model against the margin rule (the greedy ensemble against the rule "
                        "before it, on runs made since 2026-12-06)")
    args = p.parse_args(argv)
    paths: dict[tuple[str, int, int], str] = {}
    runs = read(args.pattern, paths)
    if args.seeds:
        runs = {key: {s: v for s, v in seeds.items() if args.seeds[0] <= s < args.seeds[1]}
                for key, seeds in runs.items()}

    def step(a: np.ndarray, otherwise: np.ndarray) -> np.ndarray:
        """The default's first step (few judged samples), `otherwise` the rule replayed."""
        return np.where((a[:, 6] > 0) & (a[:, 4] < AUTO_FEW_SAMPLES), default_rule(a), otherwise)
    if args.returned:
        return returned_table(runs, paths)
    if args.few:
        return table(runs, [f"few {n:g}" for n in args.few],
                     lambda task, population, seeds, a: [default_rule(a, few=n) for n in args.few])
    if args.paired:
        def by_noise(task: str, population: int, seeds: list[int], a: np.ndarray) -> list[np.ndarray]:
            diffs = np.array([paired(paths[task, population, s]) for s in seeds])
            return [step(a, diffs[:, 0] < z * diffs[:, 1]) for z in args.paired]
        return table(runs, [f"Z = {z:g}" for z in args.paired], by_noise)
    if args.disagreement:
        def by_disagreement(task: str, population: int, seeds: list[int], a: np.ndarray) -> list[np.ndarray]:
            spread = np.array([disagreement(paths[task, population, s]) for s in seeds])
            return [step(a, _relative(a) < -(AUTO_MARGIN - k * spread)) for k in args.disagreement]
        return table(runs, [f"K = {k:g}" for k in args.disagreement], by_disagreement)
    return table(runs, [f"margin {m:g}" for m in args.margins],
                 lambda task, population, seeds, a: [default_rule(a, margin=m) for m in args.margins])


def _relative(a: np.ndarray) -> np.ndarray:
    """How far the average's score is below the member rule's, as a fraction of the latter (negative: lower)."""
    return (a[:, 0] - a[:, 1]) / np.abs(a[:, 1])


def table(runs: dict[tuple[str, int], dict[int, Run]], heads: list[str],
          rule: Callable[[str, int, list[int], np.ndarray], list[np.ndarray]]) -> None:
    """One row per (task, S): for each of the replayed rules (`rule` gives, per rule, whether each seed takes
    the average), the median test loss (seeds better/worse than with the default rule, Wilcoxon p)."""
    print("| task | S | seeds | " + " | ".join(heads) + " |")
    print("|---|---|---|" + "---|" * len(heads))
    for (task, population), by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        if not seeds:
            continue
        a = np.array([by_seed[s] for s in seeds])
        now = np.where(default_rule(a), a[:, 3], a[:, 2])
        cells = [_against(now, np.where(average, a[:, 3], a[:, 2])) for average in rule(task, population, seeds, a)]
        print(f"| {task} | {population} | {len(a)} | " + " | ".join(cells) + " |")


def _against(reference: np.ndarray, test: np.ndarray) -> str:
    """`test`'s median test loss (seeds where it is better/worse than `reference`, the Wilcoxon p)."""
    better, worse = int((test < reference).sum()), int((test > reference).sum())
    pvalue = wilcoxon_p(reference, test)
    same = pvalue != pvalue  # NaN: no seed differs
    return f"{np.median(test):.4g} ({better}/{worse}" + (")" if same else f", p {format_p(pvalue)})")


def returned_table(runs: dict[tuple[str, int], dict[int, Run]], paths: dict[tuple[str, int, int], str]) -> None:
    """One row per (task, S): the margin rule's median test loss, replayed, and the returned model's (seeds where
    it is better/worse than the margin rule, Wilcoxon p)."""
    print("| task | S | seeds | margin rule | returned |")
    print("|---|---|---|---|---|")
    for (task, population), by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        if not seeds:
            continue
        a = np.array([by_seed[s] for s in seeds])
        rule = np.where(default_rule(a), a[:, 3], a[:, 2])
        returned = []
        for s in seeds:
            with h5py.File(paths[task, population, s], "r") as f:
                returned.append(float(f["test/returned_loss"][()]))
        print(f"| {task} | {population} | {len(a)} | {np.median(rule):.4g} | {_against(rule, np.array(returned))} |")


if __name__ == "__main__":
    main()
