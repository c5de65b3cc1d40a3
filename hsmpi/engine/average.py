"""The final population's averaged prediction: the model `--returns average` (or `auto`) gives back.

`population_average` sums every rank's members' mapped outputs with one
allreduce, so nothing is gathered; beside the average it cross-validates the
rule "return the best member" (what `auto` weighs it against on small splits)
and, for `--returns greedy` (or `auto` on 128 judged samples or more), selects
a weighted ensemble greedily, one member per step.  `Average` is the averaged
model itself, rebuilt from a results file's population weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hsmpi.algorithm.selection import tie_broken
from hsmpi.algorithm.streams import ENSEMBLE, derive_seed
from hsmpi.tasks import Objective, task_loss, task_metrics

if TYPE_CHECKING:
    from hsmpi.config import Config
    from hsmpi.engine.search import Search


class Average(torch.nn.Module):
    """The population's averaged prediction as one model: each member's output mapped by the task's
    `ensemble_in` (e.g. softmax), averaged, and mapped back by its `ensemble_out` (e.g. log).

    `members[j]` is member `indices[j]` of the final population, weighted by
    `counts[j]` (1 each for the plain average; how often greedy selection took
    it for `--returns greedy`).  A run that returned an average names them in
    its results file (`test/average_members`, `test/average_counts`), beside
    every member's weights (`population/weights`): `Average.from_results`
    rebuilds it from there.
    """

    def __init__(self, members: list[torch.nn.Module], indices: list[int], task: Any,
                 counts: list[int] | None = None) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.indices = list(indices)
        self.counts = [1] * len(members) if counts is None else [int(c) for c in counts]  # each member's weight
        self._into = getattr(task, "ensemble_in", None)
        self._back = getattr(task, "ensemble_out", None)

    @classmethod
    def from_results(cls, path: str, task: Any = None, device: torch.device | str = "cpu",
                     members: list[int] | None = None) -> Average:
        """The average a results file says its run returned (or of `members`), each member's weights read
        from the file's population (`task`: the run's task object; None: the file's task by name)."""
        import h5py

        from hsmpi.tasks import load_task

        counts = None
        with h5py.File(path, "r") as f:
            if members is None:
                if "test/average_members" not in f:
                    raise ValueError(f"{path}: the run returned its best member, not the average "
                                     "(pass members=[...] to average some of them)")
                members = [int(i) for i in f["test/average_members"][()]]
                if "test/average_counts" in f:  # --returns greedy: a member taken k times weighs k
                    counts = [int(c) for c in f["test/average_counts"][()]]
            task = task if task is not None else load_task(str(f.attrs["task"]))
            weights = f["population/weights"]
            models = []
            with torch.random.fork_rng(devices=[]):  # building a model draws its initial weights
                for i in members:
                    model = task.model()
                    model.load_state_dict({n: torch.from_numpy(np.asarray(weights[n][i])) for n in weights})
                    models.append(model.to(device).eval())
        return cls(models, members, task, counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for m, count in zip(self.members, self.counts):
            out = m(x)
            out = (self._into(out) if self._into is not None else out) * count
            total = out if total is None else total + out
        assert total is not None
        mean = total / sum(self.counts)
        return self._back(mean) if self._back is not None else mean


FOLDS = 5  # --returns auto: folds of the validation split the best-member rule is cross-validated on
# --returns auto: the average must beat the cross-validated best-member rule by this fraction of its score,
# since both estimates are noisy: narrower wins switched to an average that was worse on test more often than
# not (docs/benchmarks.md, "returning the population's average").
AUTO_MARGIN = 0.05
# --returns auto: a classifier's judged split (class labels) with fewer samples than this cannot tell the
# average from the member, and the average is returned.  With 125 samples or fewer it beat what the margin
# chose on every classification measured, whichever way validation pointed; with 150 or more it did not help.
# A regression is left to the margin: on one trained with SGD the average lost even on 100 samples
# (docs/benchmarks.md, "`--returns auto` on small validation splits").
AUTO_FEW_SAMPLES = 128
# ... unless the average scores worse than this many times the population's median member: one member far
# off (its outputs finite but huge) can spoil an average of logits, or of any outputs a task's `ensemble_in`
# does not bound.  A classifier's validation loss can be near 0, where ratios grow large with no harm: at 10,
# this guard kept the member on 2 of 80 runs with 50 validation samples, and the average was the better model
# on both.
AUTO_SPOILED = 100.0
# --returns greedy (and auto on a judged split of AUTO_FEW_SAMPLES or more): at most this many additions to
# the ensemble, each one member (again or for the first time), so a member can weigh up to this many times.
GREEDY_STEPS = 64


@dataclass
class Ensemble:
    """A weighted average of final members, evaluated: the plain average (every weight 1), or the greedy
    ensemble (`_greedy`). The same on every rank."""

    members: list[int]  # in order, each once
    counts: list[int]  # each one's weight (for the greedy ensemble: how often it was picked)
    judged: dict[str, float]  # loss and metrics on the judged split
    test: dict[str, float]
    score: float  # the objective's lower-is-better score on the judged split (the greedy one chose on it)


@dataclass
class PopulationAverage:
    """The final population's averaged prediction, evaluated on the split the returned model is judged on
    (validation, or with --holdout the held-back part) and on the test split; the same on every rank."""

    members: list[int]  # averaged (finite everywhere), in order; empty: none was
    judged: dict[str, float]  # loss and metrics
    test: dict[str, float]
    score: float  # the objective's lower-is-better score on the judged split (+inf: no average)
    member_cv: float = math.inf  # the best-member rule's cross-validated score there (what `auto` compares)
    samples: int = 0  # the judged split's size
    member_median: float = math.inf  # the median of the averaged members' scores there
    classes: bool = False  # the judged split's targets are class labels (an integer dtype)
    greedy: Ensemble | None = None  # with --returns greedy, or auto on a split of AUTO_FEW_SAMPLES or more

    def auto_choice(self) -> tuple[str, str]:
        """`--returns auto`'s choice ("member", "average" or "greedy"), and why. On a judged split of
        AUTO_FEW_SAMPLES or more, the greedy ensemble (which is the best member alone when adding others does
        not score better). On fewer: a classifier's average (unless it is spoiled: AUTO_SPOILED); a
        regression's average when it scores better than the best-member rule by more than AUTO_MARGIN of that
        rule's score, else the member (scores are lower-is-better; a metric's can be negative)."""
        if self.samples >= AUTO_FEW_SAMPLES and self.greedy is not None and math.isfinite(self.greedy.score):
            return "greedy", (f"{self.samples} samples judge the choice, {AUTO_FEW_SAMPLES} or more: enough to "
                              "choose members greedily on them")
        if not self.members or not math.isfinite(self.score):
            return "member", "no average"
        if self.classes and self.samples < AUTO_FEW_SAMPLES:
            if 0 < self.member_median < self.score / AUTO_SPOILED:
                return "member", (f"the average scores {self.score / self.member_median:.3g} times the median "
                                  "member: a member far off spoils it")
            return "average", (f"{self.samples} labelled samples judge the choice, fewer than "
                               f"{AUTO_FEW_SAMPLES}: too few to choose one classifier on")
        if not math.isfinite(self.member_cv):
            return "average", "no member rule scored"
        if self.score < self.member_cv - AUTO_MARGIN * abs(self.member_cv):
            return "average", f"it scores better than the best-member rule by more than {AUTO_MARGIN:.0%}"
        return "member", f"it does not score better than the best-member rule by more than {AUTO_MARGIN:.0%}"


def population_average(search: Search) -> PopulationAverage:
    """The averaged prediction of the final population's members with a finite validation score (with
    --average-top the best K of them) whose outputs are finite (collective: one allreduce).

    Beside it, what `--returns auto` weighs it against.  The best member's own
    validation score is the lowest of S noisy ones, so it looks better than it
    is and would nearly always win; instead the rule "take the member that
    scores best" is cross-validated on the judged split: on each of 5 folds,
    the member best on the other 4 is scored on it.  With --holdout the
    member's held-back score is not biased that way and is compared as it is.
    """
    comm, pop, objective = search.comm, search.population, search.objective
    task, c = pop.task, pop.config
    splits = ("holdout" if "holdout" in pop.data else "val", "test")
    picked = None
    if comm.is_root:
        scores = search.last_ranking()
        picked = (_averaged(scores, c.average_top), set(_averaged(scores, None)))
    chosen, finite = comm.bcast(picked)
    into = getattr(task, "ensemble_in", lambda out: out)
    targets = [torch.cat([y for _, y in pop.data[s].in_order()]) for s in splits]
    folds = [torch.arange(f, len(targets[0]), FOLDS, device=targets[0].device) for f in range(FOLDS)]
    folds = [f for f in folds if len(f)]
    # every rank holds a member, and every member's outputs on a split have one shape
    outputs = {m.index: [m.predict(pop.data[s]) for s in splits] for m in pop.members}
    shapes = [tuple(o.shape) for o in next(iter(outputs.values()))]
    total = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    averaged = np.zeros(pop.size)
    fold_scores = np.zeros((pop.size, len(folds)))  # every finite member's, for the cross-validation
    fold_losses = np.zeros((pop.size, len(folds) if search.ties_by_loss else 0))  # its tie-break
    greedy_wanted = c.returns == "greedy" or (c.returns == "auto" and len(targets[0]) >= AUTO_FEW_SAMPLES)
    kept: dict[int, list[torch.Tensor]] = {}  # for it, this rank's averaged members' mapped outputs
    for m in pop.members:
        if m.index not in finite:
            continue
        outs = outputs[m.index]
        fold_scores[m.index] = [_score(task, objective, outs[0][f], targets[0][f]) for f in folds]
        if search.ties_by_loss:
            fold_losses[m.index] = [_score(task, Objective(), outs[0][f], targets[0][f]) for f in folds]
        mapped = [into(o).double().cpu() for o in outs]
        if m.index in chosen and all(bool(torch.isfinite(o).all()) for o in mapped):
            for t, o in zip(total, mapped):
                t += o
            averaged[m.index] = 1.0
            if greedy_wanted:
                kept[m.index] = mapped
    summed = comm.allreduce_sum(np.concatenate([t.numpy().ravel() for t in total] + [averaged,
                                                                                     fold_scores.ravel(),
                                                                                     fold_losses.ravel()]))
    offset = sum(int(np.prod(shape)) for shape in shapes)
    members = [int(i) for i in np.flatnonzero(summed[offset:offset + pop.size])]
    sizes = np.array([len(f) for f in folds])
    at = offset + pop.size
    scored = summed[at:at + fold_scores.size].reshape(fold_scores.shape)
    if "holdout" in pop.data:  # the winner's held-back score is not the lowest of S: compared as it is
        cv = search.best.score
    else:
        rows = sorted(finite)
        losses = summed[at + fold_scores.size:].reshape(fold_losses.shape)[rows] if search.ties_by_loss else None
        cv = _cross_validated(scored[rows], sizes, losses)
    samples, classes = len(targets[0]), not (targets[0].is_floating_point() or targets[0].is_complex())
    if not members:
        return PopulationAverage([], {}, {}, math.inf, cv, samples, classes=classes)
    median = float(np.median((scored[members] * sizes).sum(axis=1) / sizes.sum()))
    means, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        means.append(torch.from_numpy(summed[offset:offset + size].reshape(shape) / len(members)))
        offset += size
    judged, test = _evaluated(task, means, targets)
    greedy = (_greedy(comm, task, objective, pop.config, kept, shapes, targets, members) if greedy_wanted
              else None)
    return PopulationAverage(members, judged, test, _judged_score(objective, judged), cv, samples,
                             median if math.isfinite(median) else math.inf, classes, greedy)


def _evaluated(task: Any, means: list[torch.Tensor], targets: list[torch.Tensor]) -> list[dict[str, float]]:
    """The loss and metrics of averaged mapped outputs (float64, on the host) on each split, mapped back by the
    task's `ensemble_out`."""
    back = getattr(task, "ensemble_out", lambda mean: mean)
    values = []
    for mean, target in zip(means, targets):
        with torch.no_grad():
            output = back(mean.float().to(target.device))
            value = {"loss": task_loss(task, output, target), **task_metrics(task, output, target)}
        values.append({n: float(v) for n, v in value.items()})
    return values


def _judged_score(objective: Any, judged: dict[str, float]) -> float:
    """The objective's lower-is-better score of an ensemble's loss and metrics on the judged split (+inf: none,
    or not finite)."""
    key = "loss" if objective.is_loss else objective.name
    score = objective.score(judged[key]) if key in judged else math.inf
    return score if math.isfinite(score) else math.inf


def _greedy(comm: Any, task: Any, objective: Any, config: Config, mapped: dict[int, list[torch.Tensor]],
            shapes: list[tuple[int, ...]], targets: list[torch.Tensor], candidates: list[int]) -> Ensemble | None:
    """Greedy ensemble selection over `candidates` on the judged split (Caruana et al., 2004; `_select`), once
    on the whole split, or with --greedy-bags N on each of N bootstrap resamples of it, a member's weight then
    its picks summed over them: each resample's selection overfits different samples, and the sum keeps what
    most of them agree on (docs/benchmarks.md, "Bagged ensemble selection", says where that helped and where
    not). With --greedy-stop out-of-bag each bag keeps the step that scores best on the rows its resample
    left out. With --greedy-whole half the weight goes to one selection on the whole split and half to the
    bags (`_halves`). `mapped`: this rank's members' outputs on the judged and test splits (of `shapes`), mapped by
    the task's `ensemble_in`. Every rank draws the same resamples (from the run seed) and adds the same rows
    in the same order, so the ensemble and its scores do not depend on the layout. `comm`, `task`, `objective`
    and `config` are the run's; the replay passes its own, serial."""
    def select(sample: torch.Tensor | None, stop: torch.Tensor | None) -> dict[int, int]:
        return _select(comm, task, objective, mapped, shapes[0], targets[0], candidates, sample, stop)

    if config.greedy_bags == 1:
        counts = select(None, None)
    else:
        counts, size = {}, len(targets[0])
        for bag in range(config.greedy_bags):
            rng = np.random.default_rng(derive_seed(config.seed, ENSEMBLE, bag))
            sample = torch.from_numpy(rng.integers(0, size, size))
            stop = None
            if config.greedy_stop == "out-of-bag":
                left = np.ones(size, dtype=bool)
                left[sample.numpy()] = False
                stop = torch.from_numpy(np.flatnonzero(left)) if left.any() else None  # none left: its own rows
            for i, picks in select(sample, stop).items():
                counts[i] = counts.get(i, 0) + picks
        if config.greedy_whole:
            counts = _halves(select(None, None), counts)
    if not counts:
        return None
    members = sorted(counts)
    weights = [counts[i] for i in members]
    means = []
    for split, shape in enumerate(shapes):  # the kept ensemble, summed member by member in one order
        weighted = torch.zeros(shape, dtype=torch.float64)
        for i, w in zip(members, weights):
            weighted += w * _row_of(comm, mapped, i, shape, split)
        means.append(weighted / sum(weights))
    judged, test = _evaluated(task, means, targets)
    return Ensemble(members, weights, judged, test, _judged_score(objective, judged))


def _halves(first: dict[int, int], second: dict[int, int]) -> dict[int, int]:
    """Two ensembles' picks as one ensemble's integer weights in which each weighs half: a member's picks in
    one times the other's total, summed, divided by the weights' greatest common divisor (either empty: the
    other)."""
    if not first or not second:
        return dict(first or second)
    n1, n2 = sum(first.values()), sum(second.values())
    weights = {i: first.get(i, 0) * n2 + second.get(i, 0) * n1 for i in sorted(set(first) | set(second))}
    divisor = math.gcd(*weights.values())
    return {i: w // divisor for i, w in weights.items()}


def _select(comm: Any, task: Any, objective: Any, mapped: dict[int, list[torch.Tensor]], shape: tuple[int, ...],
            target: torch.Tensor, candidates: list[int], sample: torch.Tensor | None,
            stop: torch.Tensor | None) -> dict[int, int]:
    """One ensemble selection on the judged split's rows `sample` (None: all of them, in order): from nothing,
    add the member whose addition scores best, with replacement, S times (at most GREEDY_STEPS), and keep the
    ensemble of the step that scores best on the rows `stop` (None: on `sample`), as each member's picks in
    it; its first pick is the best member, so it can be the member alone (collective: each step one MINLOC
    over the ranks' members' scores and one sum that carries the chosen member's outputs to every rank)."""
    back = getattr(task, "ensemble_out", lambda mean: mean)
    judged = target if sample is None else target[sample.to(target.device)]
    held_target = None if stop is None else target[stop.to(target.device)]  # what the kept step is judged on

    def rows(row: torch.Tensor) -> torch.Tensor:
        return row if sample is None else row[sample]

    local = {i: rows(mapped[i][0]) for i in candidates if i in mapped}
    total: torch.Tensor | None = None
    held: torch.Tensor | None = None  # with `stop`: the picks' outputs summed on those rows
    counts: dict[int, int] = {}
    best: tuple[float, dict[int, int]] = (math.inf, {})
    for step in range(min(len(candidates), GREEDY_STEPS)):
        scores = []
        for row in local.values():
            mean = (row if total is None else total + row) / (step + 1)
            with torch.no_grad():
                scores.append(_score(task, objective, back(mean.float().to(target.device)), judged))
        score, chosen = comm.allreduce_minloc(scores, list(local))
        if not math.isfinite(score):
            break
        full = _row_of(comm, mapped, chosen, shape, 0)
        row = rows(full)
        total = row if total is None else total + row
        counts[chosen] = counts.get(chosen, 0) + 1
        if stop is not None and held_target is not None:  # the step is judged on rows this selection never saw
            part = full[stop]
            held = part if held is None else held + part
            score = _score(task, objective, back((held / (step + 1)).float().to(target.device)), held_target)
        if score < best[0]:
            best = (score, dict(counts))
    return best[1]


def _row_of(comm: Any, mapped: dict[int, list[torch.Tensor]], member: int, shape: tuple[int, ...],
            split: int) -> torch.Tensor:
    """One member's mapped outputs on a split, on every rank (a sum to which only its owner adds anything)."""
    row = mapped[member][split].numpy() if member in mapped else np.zeros(shape)
    return torch.from_numpy(comm.allreduce_sum(np.ascontiguousarray(row, dtype=np.float64)))


def _score(task: Any, objective: Any, output: torch.Tensor, target: torch.Tensor) -> float:
    """The objective's lower-is-better score of one member's outputs on part of a split (+inf: not finite)."""
    with torch.no_grad():
        if objective.is_loss:
            value = float(task_loss(task, output, target))
        else:
            value = float(task_metrics(task, output, target).get(objective.name, math.nan))
    score = objective.score(value)
    return score if math.isfinite(score) else math.inf


def _cross_validated(scores: np.ndarray, sizes: np.ndarray, losses: np.ndarray | None = None) -> float:
    """The rule "return the member with the best score" cross-validated over folds: on each fold, the
    member best on the others, scored on it; weighted by fold size (members x folds of fold means).
    `losses` (the same shape; --tie-break loss): equal scores on the others go to the lower loss there."""
    if not len(scores):
        return math.inf
    with np.errstate(invalid="ignore"):
        sums = scores * sizes
        total = sums.sum(axis=1)
        loss_sums = None if losses is None else losses * sizes
        loss_total = None if loss_sums is None else loss_sums.sum(axis=1)
        picked = 0.0
        for f in range(len(sizes)):
            rest = np.where(np.isfinite(total), total - sums[:, f], np.inf)
            if loss_sums is not None and loss_total is not None:  # equal scores on the others: lower loss first
                rest = tie_broken(rest, loss_total - loss_sums[:, f])
            picked += sums[int(np.argmin(rest)), f]
    value = picked / sizes.sum()
    return float(value) if math.isfinite(value) else math.inf


def _averaged(scores: np.ndarray, top: int | None) -> list[int]:
    """Rank 0: who is averaged: finite last scores, the best `top` of them when given."""
    scores = np.asarray(scores, dtype=float)
    finite = [int(i) for i in np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable")
              if math.isfinite(scores[i])]
    return sorted(finite[:top] if top is not None else finite)
