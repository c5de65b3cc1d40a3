"""--returns: the run hands back the best member, the population's averaged prediction, a weighted average of
members chosen greedily on validation (`greedy`), or one of them by the size of the validation split (`auto`);
--average-top averages (or chooses from) the best K only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import hsmpi
from hsmpi.cli.report import load_history, summary
from hsmpi.config import Config, ConfigError
from hsmpi.engine.average import AUTO_FEW_SAMPLES, AUTO_MARGIN, AUTO_SPOILED, Average, Ensemble, PopulationAverage
from hsmpi.tasks import load_task, task_loss

from tasks_for_tests import NegLoss, TinyAdam, _data

BASE = dict(population=6, epochs=6, sessions=3, seed=3, threads=1, log=None)


def _run(tmp_path: Path, name: str, task: Any = None, **options: Any) -> tuple[hsmpi.Result, Path]:
    out = tmp_path / name
    result = hsmpi.run(task if task is not None else TinyAdam(), out=str(out), **{**BASE, **options})
    return result, out


def _test_split(task: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, test = task.data(seed)
    return test.tensors


def _members(out: Path, task: Any) -> list[torch.nn.Module]:
    """The final population's models, rebuilt from results.h5's population weights."""
    with h5py.File(out / "results.h5", "r") as f:
        weights = {name: f[f"population/weights/{name}"][()] for name in f["population/weights"]}
    models = []
    for i in range(next(iter(weights.values())).shape[0]):
        model = task.model()
        model.load_state_dict({k: torch.from_numpy(v[i]) for k, v in weights.items()})
        models.append(model.eval())
    return models


def test_member_returns_the_best_member(tmp_path: Path) -> None:
    result, out = _run(tmp_path, "member", returns="member")
    assert Config().returns == "auto" and result.returned == "member"
    assert not isinstance(result.best_model, Average) and result.returned_model() is result.best_model
    assert result.test_loss == result.member_test_loss
    with h5py.File(out / "results.h5", "r") as f:
        assert f["test/returned"][()].decode() == "member"
        assert "test/returned_why" not in f and result.returned_why == ""  # --returns member has no reason to give
        assert f["test/returned_loss"][()] == f["test/best_loss"][()] == result.test_loss
        assert np.isfinite(f["test/ensemble_val_loss"][()])
    assert json.loads((out / "top.json").read_text())["returned"] == "member"
    with pytest.raises(ValueError, match="returned its best member, not the average"):
        Average.from_results(str(out / "results.h5"))


def test_average_returns_a_model_that_averages_the_final_population(tmp_path: Path) -> None:
    task = TinyAdam()
    member, _ = _run(tmp_path, "member", returns="member")
    result, out = _run(tmp_path, "average", returns="average")
    # the training is the same: only what is handed back differs
    assert result.member_test_loss == member.test_loss and result.ensemble_test_loss == member.ensemble_test_loss
    assert result.returned == "average" and not isinstance(result.best_model, Average)
    assert result.averaged == list(range(BASE["population"]))
    assert result.test_loss == pytest.approx(result.ensemble_test_loss, rel=1e-6)
    model = result.returned_model()
    assert isinstance(model, Average) and model.indices == result.averaged
    x, y = _test_split(task, BASE["seed"])
    with torch.no_grad():
        by_hand = torch.stack([m(x) for m in _members(out, task)]).mean(0)
        returned = model(x)
    assert torch.allclose(returned, by_hand, atol=1e-6)
    assert float(task_loss(task, returned, y)) == pytest.approx(result.test_loss, rel=1e-5)
    assert result.test_loss != member.test_loss
    # the results file alone rebuilds it, after the folder is moved, with the task found by its name
    moved = tmp_path / "moved"
    out.rename(moved)
    with torch.no_grad():
        assert torch.equal(Average.from_results(str(moved / "results.h5"), TinyAdam())(x), returned)
        some = Average.from_results(str(moved / "results.h5"), TinyAdam(), members=[0, 2])
        outputs = [m(x) for m in _members(moved, task)]
        assert torch.allclose(some(x), (outputs[0] + outputs[2]) / 2, atol=1e-6)
    out = moved
    assert "(the run returned the population average)" in summary(load_history(str(out / "results.h5")))
    described = json.loads((out / "top.json").read_text())
    assert described["returned"] == "average" and described["average"]["members"] == result.averaged
    with h5py.File(out / "results.h5", "r") as f:
        assert f["test/returned"][()].decode() == "average"
        assert f["test/returned_loss"][()] == result.test_loss
        assert list(f["test/average_members"][()]) == result.averaged
        assert f["test/ensemble_val_loss"][()] == result.best_val_loss


def test_average_of_a_classifier_averages_probabilities(tmp_path: Path) -> None:
    """A task's ensemble hooks shape the returned model: breast-cancer averages softmax, returns log-probs."""
    task = load_task("breast-cancer")
    result, path = _run(tmp_path, "bc", task="breast-cancer", returns="average", population=4, epochs=4,
                        sessions=2)
    x, y = _test_split(task, BASE["seed"])
    model = Average.from_results(str(path / "results.h5"))  # the task by the name the file holds
    with torch.no_grad():
        members = [m(x) for m in model.members]
        out = model(x)
    assert torch.allclose(out, torch.log(torch.stack([m.softmax(-1) for m in members]).mean(0)), atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(len(x)), atol=1e-5)
    assert float(task_loss(task, out, y)) == pytest.approx(result.test_loss, rel=1e-5)
    assert "accuracy" in result.test_metrics


def _wide_data(seed: int, val: int = AUTO_FEW_SAMPLES) -> Any:
    """TinyAdam's data with 32 training samples (members that fit them differently) and a validation split of
    `val` samples: AUTO_FEW_SAMPLES, enough for `auto` to choose members greedily."""
    train, _, _ = _data(seed, n=32)
    _, val_split, test = _data(seed + 1000, n=2 * val)
    return train, val_split, test


class _Wide(TinyAdam):
    def data(self, seed: int) -> Any:
        return _wide_data(seed)


class _WideNegLoss(NegLoss):
    def data(self, seed: int) -> Any:
        return _wide_data(seed)


class _Fewer(TinyAdam):
    """_Wide with one validation sample fewer than AUTO_FEW_SAMPLES: a regression `auto` weighs by the margin."""

    def data(self, seed: int) -> Any:
        return _wide_data(seed, AUTO_FEW_SAMPLES - 1)


def test_auto_weighs_the_average_against_the_best_member_rule_cross_validated(tmp_path: Path) -> None:
    seen = set()
    for seed in range(6):
        result, out = _run(tmp_path, f"auto{seed}", task=_Fewer(), returns="auto", seed=seed)
        with h5py.File(out / "results.h5", "r") as f:
            average_val, member_val = f["test/ensemble_val_loss"][()], f["best"].attrs["val_loss"]
            member_cv = f["test/member_val_cv"][()]
            val = f["history/val_loss"][-1]
            assert f["test/judged_samples"][()] == AUTO_FEW_SAMPLES - 1 and "test/greedy_loss" not in f
            why = f["test/returned_why"][()].decode()
        # the winner's own score is the lowest of S: the cross-validated rule can only be worse or equal
        assert member_val == val.min() and member_cv >= member_val * (1 - 1e-6)
        expected = "average" if average_val < member_cv * (1 - AUTO_MARGIN) else "member"
        assert result.returned == expected, seed
        assert result.best_val_loss == (average_val if expected == "average" else member_val)
        assert why == result.returned_why and "best-member rule by more than 5%" in why
        assert why.startswith("it scores better" if expected == "average" else "it does not score better")
        seen.add(expected)
    assert seen == {"average", "member"}  # the seeds cover both outcomes, so both branches ran


def test_auto_returns_the_average_when_too_few_labelled_samples_judge_it(tmp_path: Path) -> None:
    """_TinyClasses' validation split has 32 labelled samples: `auto` returns the average whichever way they
    point (of probabilities, or of logits for a task without ensemble hooks), and says why in the log and the
    results file; with --holdout the held-back part is what judges."""
    seen = set()
    for seed in range(4):
        lines: list[str] = []
        result, out = _run(tmp_path, f"few{seed}", task=_TinyClasses(), returns="auto", seed=seed,
                           log=lines.append)
        with h5py.File(out / "results.h5", "r") as f:
            average_val, member_cv = f["test/ensemble_val_loss"][()], f["test/member_val_cv"][()]
            assert f["test/judged_samples"][()] == 32 and f["test/judged_classes"][()] == 1
            assert f["test/returned"][()].decode() == "average"
            median = np.median(f["population/val_loss"][()])
            assert f["test/member_val_median"][()] == pytest.approx(median, rel=1e-5)
        assert result.returned == "average" and result.best_val_loss == average_val
        assert result.test_loss == result.ensemble_test_loss
        expected = ("returned: the population average (--returns auto: 32 labelled samples judge the choice, "
                    f"fewer than {AUTO_FEW_SAMPLES}: too few to choose one classifier on)")
        assert expected in lines
        assert f"--returns auto: {result.returned_why}" in summary(load_history(str(out / "results.h5")))
        seen.add(bool(average_val < member_cv * (1 - AUTO_MARGIN)))
    assert False in seen  # the margin alone would have returned the member on some of these seeds
    logits, _ = _run(tmp_path, "logits", task=_TinyLogits(), returns="auto")
    assert logits.returned == "average" and logits.returned_why.startswith("32 labelled samples")
    result, out = _run(tmp_path, "holdout", task=_TinyClasses(), returns="auto", elitism=True, holdout=0.5)
    with h5py.File(out / "results.h5", "r") as f:
        assert f["test/judged_samples"][()] == 16
    assert result.returned == "average"


def test_auto_weighs_a_regression_by_the_margin_on_any_split(tmp_path: Path) -> None:
    """TinyAdam's 32 validation samples are float targets: a regression, which the margin decides."""
    for seed in range(3):
        result, out = _run(tmp_path, f"regression{seed}", returns="auto", seed=seed)
        with h5py.File(out / "results.h5", "r") as f:
            assert f["test/judged_samples"][()] == 32 and f["test/judged_classes"][()] == 0
            average_val, member_cv = f["test/ensemble_val_loss"][()], f["test/member_val_cv"][()]
        expected = "average" if average_val < member_cv * (1 - AUTO_MARGIN) else "member"
        assert result.returned == expected and "best-member rule by more than 5%" in result.returned_why


def test_auto_keeps_the_member_when_one_far_off_member_spoils_the_average(tmp_path: Path) -> None:
    """A classifier that averages logits, one of whose members has finite but huge ones (weights scaled up by
    1e3 after every step): the average scores many times the median member, and `auto` returns the best member
    even on a small split."""
    lines: list[str] = []
    result, out = _run(tmp_path, "spoiled", task=_BlowsUp(), returns="auto", log=lines.append,
                       independent_init=False)  # the shared weights: the member it blows up starts near the rest
    with h5py.File(out / "results.h5", "r") as f:
        last = f["population/val_loss"][()]
        average_val = f["test/ensemble_val_loss"][()]
    assert np.isfinite(last).all() and last.max() > AUTO_SPOILED * 10 * np.median(last)  # finite, far off
    assert average_val > AUTO_SPOILED * np.median(last)
    assert result.returned == "member" and "a member far off spoils it" in result.returned_why
    assert any(line.startswith("returned: the best member (--returns auto: the average scores") for line in lines)


def test_auto_choice_on_its_own() -> None:
    """The rule without a run: enough samples return the greedy ensemble; fewer labelled samples return the
    average unless it is spoiled (a guard that only a positive median can trip: a maximised metric's scores
    are negative); a regression on fewer weighs the margin."""
    greedy = Ensemble([1], [2], {}, {}, 0.5)

    def choice(score: float, cv: float, samples: int, median: float, classes: bool = True,
               chosen: Ensemble | None = None) -> str:
        return PopulationAverage([0, 1], {}, {}, score, cv, samples, median, classes, chosen).auto_choice()[0]

    few, enough = AUTO_FEW_SAMPLES - 1, AUTO_FEW_SAMPLES
    assert choice(2.0, 1.0, enough, 1.0, chosen=greedy) == choice(0.1, 1.0, enough, 1.0, False, greedy) == "greedy"
    assert choice(2.0, 1.0, few, 1.0, chosen=greedy) == "average"  # a greedy ensemble, but too few samples
    assert choice(2.0, 1.0, few, 1.0) == "average" and choice(2.0, 1.0, few, 1.0, classes=False) == "member"
    assert choice(0.9, 1.0, few, 1.0, classes=False) == "average"
    assert choice(1.0 + 1e-9, 0.1, few, 1.0 / AUTO_SPOILED) == "member"  # spoiled
    assert choice(1.0, 0.1, few, 1.0 / AUTO_SPOILED) == "average"  # at the guard exactly: kept
    assert choice(-0.5, -0.9, few, -0.9) == "average"  # a maximised metric: no guard
    # without a greedy ensemble (none scored), enough samples fall back on the margin
    assert choice(0.9, 1.0, enough, 1.0) == "average" and choice(0.96, 1.0, enough, 1.0) == "member"
    assert choice(0.9, 1.0, enough, 1.0, chosen=Ensemble([], [], {}, {}, np.inf)) == "average"
    assert choice(1.0, np.inf, enough, 1.0) == choice(1.0, 1.0, few, np.inf) == "average"
    assert PopulationAverage([], {}, {}, np.inf, 1.0, few).auto_choice() == ("member", "no average")
    assert PopulationAverage([0], {}, {}, np.inf, 1.0, few, classes=True).auto_choice()[0] == "member"


def test_the_option_states_the_numbers_auto_uses() -> None:
    import dataclasses

    doc = next(f.metadata["doc"] for f in dataclasses.fields(Config) if f.name == "returns")
    assert f"`greedy` when {AUTO_FEW_SAMPLES} or more validation samples judge it" in doc
    assert f"by {AUTO_MARGIN:.0%}" in doc


def _greedy_by_hand(outputs: list[torch.Tensor], target: torch.Tensor, task: Any,
                    held: tuple[list[torch.Tensor], torch.Tensor] | None = None) -> dict[int, int]:
    """Ensemble selection written out plainly: add the member whose addition gives the lowest loss, S times
    (ties to the lower index), and keep the best ensemble seen (`held`: other rows' outputs and targets, the
    ensemble kept the one that scores best on them)."""
    def loss(rows: list[torch.Tensor], y: torch.Tensor, members: list[int]) -> float:
        return float(task_loss(task, torch.stack([rows[j].double() for j in members]).mean(0).float(), y))

    picked: list[int] = []
    best: tuple[float, dict[int, int]] = (np.inf, {})
    for _ in range(len(outputs)):
        losses = [loss(outputs, target, picked + [i]) for i in range(len(outputs))]
        picked.append(int(np.argmin(losses)))
        score = min(losses) if held is None else loss(*held, picked)
        if score < best[0]:
            best = (score, {i: picked.count(i) for i in sorted(set(picked))})
    return best[1]


def test_greedy_returns_the_ensemble_selection_rebuilt_from_the_files(tmp_path: Path) -> None:
    """--returns greedy --greedy-bags 1: the members and weights the run chose are those ensemble selection
    chooses on the whole validation split from the final population's weights in results.h5, and the returned
    model is their weighted average, rebuilt from the file alone."""
    task = _Wide()
    lines: list[str] = []
    result, out = _run(tmp_path, "greedy", task=task, returns="greedy", greedy_bags=1, log=lines.append)
    _, val, test = task.data(BASE["seed"])
    models = _members(out, task)
    with torch.no_grad():
        chosen = _greedy_by_hand([m(val.tensors[0]) for m in models], val.tensors[1], task)
    assert result.returned == "greedy" and result.averaged == sorted(chosen)
    with h5py.File(out / "results.h5", "r") as f:
        counts = dict(zip(f["test/average_members"][()].tolist(), f["test/average_counts"][()].tolist()))
        assert f["test/returned"][()].decode() == "greedy"
        assert f["test/greedy_loss"][()] == f["test/returned_loss"][()] == result.test_loss
        assert f["test/greedy_members"][()] == len(chosen) and f["test/greedy_picks"][()] == sum(chosen.values())
    assert counts == chosen
    x, y = test.tensors
    model = Average.from_results(str(out / "results.h5"), task)
    with torch.no_grad():
        by_hand = sum(c * models[i](x) for i, c in chosen.items()) / sum(chosen.values())
        assert torch.allclose(model(x), by_hand, atol=1e-6)
        assert torch.equal(result.returned_model()(x), model(x))
        assert float(task_loss(task, model(x), y)) == pytest.approx(result.test_loss, rel=1e-5)
    described = json.loads((out / "top.json").read_text())
    assert described["returned"] == "greedy"
    assert dict(zip(described["average"]["members"], described["average"]["counts"])) == chosen
    assert any("| greedy ensemble " in line and "(returned)" in line for line in lines)
    assert "(the run returned the greedy ensemble)" in summary(load_history(str(out / "results.h5")))


def _bagged(tmp_path: Path, name: str, bags: int, **settings: Any) -> tuple[Any, Path, list[torch.nn.Module],
                                                                          list[torch.Tensor], torch.Tensor,
                                                                          list[torch.Tensor]]:
    """A --returns greedy run of _Wide with `bags` bags: its result and folder, its final members, their outputs
    on the validation split and its targets, and each bag's resample, drawn as the run draws them (with
    replacement, from the run seed's ENSEMBLE streams)."""
    from hsmpi.algorithm.streams import ENSEMBLE, derive_seed

    task = _Wide()
    result, out = _run(tmp_path, name, task=task, returns="greedy", greedy_bags=bags, **settings)
    models = _members(out, task)
    x, y = task.data(BASE["seed"])[1].tensors
    with torch.no_grad():
        outputs = [m(x) for m in models]
    samples = [torch.from_numpy(np.random.default_rng(derive_seed(BASE["seed"], ENSEMBLE, bag)).integers(
        0, len(y), len(y))) for bag in range(bags)]
    return result, out, models, outputs, y, samples


def _returns_the_picks(result: Any, out: Path, models: list[torch.nn.Module], counts: dict[int, int]) -> None:
    """The run returned the members `counts` names, each weighing its count, in results.h5 and on test."""
    assert result.returned == "greedy" and result.averaged == sorted(counts)
    with h5py.File(out / "results.h5", "r") as f:
        assert dict(zip(f["test/average_members"][()].tolist(), f["test/average_counts"][()].tolist())) == counts
        assert f["test/greedy_picks"][()] == sum(counts.values())
    task = _Wide()
    xt, yt = task.data(BASE["seed"])[2].tensors
    with torch.no_grad():
        by_hand = sum(c * models[i](xt) for i, c in counts.items()) / sum(counts.values())
        assert torch.allclose(Average.from_results(str(out / "results.h5"), task)(xt), by_hand, atol=1e-6)
        assert float(task_loss(task, by_hand, yt)) == pytest.approx(result.test_loss, rel=1e-5)


def test_greedy_bags_sum_the_picks_of_selections_on_bootstrap_resamples(tmp_path: Path) -> None:
    """--greedy-bags N: ensemble selection on each of N resamples of the validation split, a member weighing
    its picks summed over them; the returned model is that weighted average, rebuilt from results.h5 alone."""
    result, out, models, outputs, y, samples = _bagged(tmp_path, "bags", 4, greedy_stop="in-bag", greedy_whole=False)
    counts: dict[int, int] = {}
    for sample in samples:
        for i, c in _greedy_by_hand([o[sample] for o in outputs], y[sample], _Wide()).items():
            counts[i] = counts.get(i, 0) + c
    assert len({tuple(d.tolist()) for d in samples}) == len(samples)  # each bag its own resample
    assert counts != _greedy_by_hand(outputs, y, _Wide())  # not what one selection on the whole split gives
    _returns_the_picks(result, out, models, counts)


def test_greedy_stop_out_of_bag_keeps_each_bags_step_that_scores_best_on_the_rows_it_left_out(
        tmp_path: Path) -> None:
    """--greedy-stop out-of-bag: each bag selects on its resample as in bag, but keeps the step whose ensemble
    scores best on the validation rows its resample did not draw; the returned weights are those picks summed,
    rebuilt by hand from results.h5."""
    result, out, models, outputs, y, samples = _bagged(tmp_path, "oob", 4, greedy_stop="out-of-bag",
                                                       greedy_whole=False)
    counts: dict[int, int] = {}
    in_bag: dict[int, int] = {}
    for sample in samples:
        left = torch.tensor(sorted(set(range(len(y))) - set(sample.tolist())))
        assert 0 < len(left) < len(y)
        drawn = [o[sample] for o in outputs]
        for i, c in _greedy_by_hand(drawn, y[sample], _Wide(), ([o[left] for o in outputs], y[left])).items():
            counts[i] = counts.get(i, 0) + c
        for i, c in _greedy_by_hand(drawn, y[sample], _Wide()).items():
            in_bag[i] = in_bag.get(i, 0) + c
    assert counts != in_bag  # the rows left out kept other steps than the resamples themselves would
    _returns_the_picks(result, out, models, counts)


def test_greedy_whole_gives_half_the_weight_to_one_selection_on_the_whole_split(tmp_path: Path) -> None:
    """--greedy-whole: the out-of-bag bags' summed picks and one selection on the whole split each weigh half:
    a member weighs its picks in one times the other's total, summed, in lowest terms; rebuilt by hand from
    results.h5."""
    result, out, models, outputs, y, samples = _bagged(tmp_path, "whole", 4, greedy_stop="out-of-bag",
                                                       greedy_whole=True)
    bags: dict[int, int] = {}
    for sample in samples:
        left = torch.tensor(sorted(set(range(len(y))) - set(sample.tolist())))
        held = ([o[left] for o in outputs], y[left])
        for i, c in _greedy_by_hand([o[sample] for o in outputs], y[sample], _Wide(), held).items():
            bags[i] = bags.get(i, 0) + c
    whole = _greedy_by_hand(outputs, y, _Wide())
    n_bags, n_whole = sum(bags.values()), sum(whole.values())
    weights = {i: whole.get(i, 0) * n_bags + bags.get(i, 0) * n_whole for i in set(whole) | set(bags)}
    divisor = math.gcd(*weights.values())
    counts = {i: w // divisor for i, w in weights.items()}
    for i in counts:  # each half weighs its members as its own picks do, normalised
        share = whole.get(i, 0) / n_whole / 2 + bags.get(i, 0) / n_bags / 2
        assert counts[i] / sum(counts.values()) == pytest.approx(share)
    assert counts not in (bags, whole)
    _returns_the_picks(result, out, models, counts)


def test_halves_keeps_integer_weights_in_lowest_terms() -> None:
    from hsmpi.engine.average import _halves

    assert _halves({0: 2, 1: 1}, {1: 4}) == {0: 1, 1: 2}  # 2/3 and 1/3, then 0 and 1, halved: 1/3 and 2/3
    assert _halves({0: 1}, {0: 3}) == {0: 1}
    assert _halves({}, {2: 5}) == {2: 5} and _halves({2: 5}, {}) == {2: 5}


def test_auto_returns_the_greedy_ensemble_when_enough_samples_judge_it(tmp_path: Path) -> None:
    """On AUTO_FEW_SAMPLES validation samples `auto` returns what `greedy` does, and says why; with one
    selection on the whole split (--greedy-bags 1) the greedy ensemble's first pick is the best member, so it
    never validates worse than the member."""
    for seed in range(3):
        lines: list[str] = []
        auto, out = _run(tmp_path, f"auto{seed}", task=_Wide(), returns="auto", seed=seed, greedy_bags=1,
                         log=lines.append)
        greedy, _ = _run(tmp_path, f"greedy{seed}", task=_Wide(), returns="greedy", seed=seed, greedy_bags=1)
        assert auto.returned == "greedy" and auto.test_loss == greedy.test_loss and auto.averaged == greedy.averaged
        with h5py.File(out / "results.h5", "r") as f:
            assert f["test/greedy_val_loss"][()] <= f["best"].attrs["val_loss"] * (1 + 1e-6)
        assert auto.returned_why == (f"{AUTO_FEW_SAMPLES} samples judge the choice, {AUTO_FEW_SAMPLES} or more: "
                                     "enough to choose members greedily on them")
        assert f"returned: the greedy ensemble (--returns auto: {auto.returned_why})" in lines


def test_the_cross_validation_of_the_best_member_rule() -> None:
    from hsmpi.engine.average import _cross_validated

    sizes = np.array([2, 2, 1])
    # fold means; as sums member 0 has [6, 0, 0] and member 1 [2, 4, 2]. Each fold is judged by the member
    # best on the other folds: fold 0 by member 0 (0 against 6): 6; fold 1 by member 1 (6 against 4): 4;
    # fold 2 by member 0 (a tie, 6 and 6: the first): 0
    scores = np.array([[3.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    assert _cross_validated(scores, sizes) == pytest.approx((6 + 4 + 0) / 5)
    assert (scores * sizes).sum(1).min() / 5 < 2.0  # the winner's own score looks better than the rule is
    assert _cross_validated(np.array([[1.0, 1.0, 1.0]]), sizes) == pytest.approx(1.0)
    assert _cross_validated(np.array([[np.inf] * 3, [1.0, 2.0, 3.0]]), sizes) == pytest.approx((2 + 4 + 3) / 5)
    assert _cross_validated(np.zeros((0, 3)), sizes) == np.inf
    # --tie-break loss: fold 2's tie (6 and 6 on the others) goes to the member whose loss there is lower
    losses = np.array([[0.5, 0.5, 0.5], [0.1, 0.1, 0.1]])
    assert _cross_validated(scores, sizes, losses) == pytest.approx((6 + 4 + 2) / 5)
    assert _cross_validated(scores, sizes, losses[::-1]) == pytest.approx((6 + 4 + 0) / 5)


def test_auto_follows_a_maximised_objective_as_it_would_the_loss(tmp_path: Path) -> None:
    """NegLoss's objective is minus the loss, maximised: auto must choose exactly as it does on the loss."""
    for seed in range(4):
        by_loss, _ = _run(tmp_path, f"loss{seed}", task=_Wide(), returns="auto", seed=seed)
        by_metric, _ = _run(tmp_path, f"metric{seed}", task=_WideNegLoss(), returns="auto", seed=seed)
        assert by_metric.returned == by_loss.returned, seed
        assert by_metric.test_loss == by_loss.test_loss


def test_average_top_averages_the_best_k_on_validation(tmp_path: Path) -> None:
    result, out = _run(tmp_path, "top", returns="average", average_top=2)
    with h5py.File(out / "results.h5", "r") as f:
        last = f["population/val_loss"][()]
    assert result.averaged == sorted(int(i) for i in np.argsort(last)[:2])
    task = TinyAdam()
    x, _ = _test_split(task, BASE["seed"])
    models = _members(out, task)
    with torch.no_grad():
        by_hand = (models[result.averaged[0]](x) + models[result.averaged[1]](x)) / 2
        assert torch.allclose(result.returned_model()(x), by_hand, atol=1e-6)


def test_the_average_leaves_out_a_member_that_diverged(tmp_path: Path) -> None:
    result, out = _run(tmp_path, "diverged", task=_Diverges(), returns="average")
    with h5py.File(out / "results.h5", "r") as f:
        last = f["population/val_loss"][()]
    assert not np.isfinite(last).all() and np.isfinite(last).any()
    assert result.averaged == [int(i) for i in np.flatnonzero(np.isfinite(last))]
    assert np.isfinite(result.test_loss)


class _TinyLogits(TinyAdam):
    """TinyAdam's data as two classes (target above 1 or not): 32 labelled validation samples; a 3-16-2 MLP on
    cross-entropy, without ensemble hooks (its average is of logits)."""

    def data(self, seed: int) -> Any:
        return tuple(TensorDataset(x, (y > 1.0).long().view(-1)) for x, y in (d.tensors for d in _data(seed)))

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)


class _TinyClasses(_TinyLogits):
    """_TinyLogits averaging class probabilities, as the built-in classifiers do."""

    def ensemble_in(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)

    def ensemble_out(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.clamp_min(1e-12))


class _Diverges(TinyAdam):
    """A member with a learning rate above 0.02 has its weights poisoned (NaN) after every step."""

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return _BreaksAbove(list(params), lr=hp["lr"], betas=(hp["beta1"], 0.999), limit=0.02,
                            breaks=lambda p: p.fill_(float("nan")))


class _BlowsUp(_TinyLogits):
    """A member with a learning rate above 0.02 has its weights scaled by 1e3 after every step: finite outputs,
    far off (and in the last session, nobody copies over them)."""

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return _BreaksAbove(list(params), lr=hp["lr"], betas=(hp["beta1"], 0.999), limit=0.02,
                            breaks=lambda p: p.mul_(1e3).clamp_(-1e6, 1e6))


class _BreaksAbove(torch.optim.Adam):
    """Adam that applies `breaks` to every parameter after each step while its learning rate is above `limit`."""

    def __init__(self, params: Any, *, limit: float, breaks: Any, **options: Any) -> None:
        super().__init__(params, **options)
        self.limit, self.breaks = limit, breaks

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        out = super().step(closure)
        if self.param_groups[0]["lr"] > self.limit:
            for group in self.param_groups:
                for p in group["params"]:
                    self.breaks(p)
        return out


@pytest.mark.parametrize("settings, message", [
    ({"returns": "mean"}, "returns must be one of ['member', 'average', 'greedy', 'auto']"),
    ({"returns": "average", "average_top": 0}, "average-top must be at least 1"),
    ({"average_top": 2.5}, "average-top must be an integer"),
])
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config(**settings)
