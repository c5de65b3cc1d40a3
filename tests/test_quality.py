"""The quality benchmark: baselines spend the same budget, tables are right, the --quick smoke run works."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from benchmarks.quality import methods, tables
from benchmarks.quality.trial import Problem, train_trial
from hsmpi.algorithm.space import check_hparams, sample_space
from hsmpi.parallel.comm import SerialComm

from conftest import ROOT, mpirun_cmd

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem("diabetes", seed=3, population=4, epochs=3, sessions=1)


def test_trial_matches_an_hsmpi_member_trained_alone(problem: Problem, tmp_path: Path) -> None:
    """Same seed, same index, same hyperparameters: a trial is an hsmpi member with m = 1, trained one at a
    time (as a trial is; hsmpi's `auto` would batch it, with other bits and dropout masks)."""
    from hsmpi.engine.job import run

    hp = sample_space(problem.task.space, np.random.default_rng(0))
    a = train_trial(problem, 0, hp, 3)
    b = train_trial(problem, 0, hp, 3)
    assert a.val == b.val and len(a.val) == 3
    result = run("diabetes", comm=SerialComm(), log=None, population=1, epochs=3, sessions=1, seed=3,
                 out=str(tmp_path), export_top=0, threads=1, vectorize="off")
    # hsmpi's member 0 draws its own hyperparameters; train the trial with those and compare.
    c = train_trial(problem, 0, result.best_hparams, 3)
    assert c.val[-1] == pytest.approx(result.best_val_loss, rel=1e-6)
    assert c.test == pytest.approx(result.test_loss, rel=1e-6)


def test_with_trial_init_independent_a_trial_is_the_member_with_its_own_initial_weights(tmp_path: Path) -> None:
    """--trial-init independent: trial i is hsmpi's member i run with --independent-init (member 0's own weights
    are the shared ones; every other member's differ)."""
    from benchmarks.quality.__main__ import parse, plan
    from benchmarks.quality.runner import OWN_INIT, baselines
    from hsmpi.engine.job import run

    result = run("diabetes", comm=SerialComm(), log=None, population=3, epochs=3, sessions=1, seed=3,
                 out=str(tmp_path), export_top=0, threads=1, independent_init=True, returns="member",
                 vectorize="off")
    own = Problem("diabetes", seed=3, population=4, epochs=3, sessions=1, independent_init=True)
    shared = Problem("diabetes", seed=3, population=4, epochs=3, sessions=1)
    i, hp = result.best_member, result.best_hparams
    assert train_trial(own, i, hp, 3).test == pytest.approx(result.test_loss, rel=1e-6)
    for index in (1, 2):
        assert train_trial(own, index, hp, 3).test != pytest.approx(train_trial(shared, index, hp, 3).test, rel=1e-4)
    # the external tools get the option and a label of their own; hsmpi's cells are its own settings
    labels = {m.label: m.options for m in baselines(16, "independent")}
    assert labels["random" + OWN_INIT] == {"trial_init": "independent"} and "random" not in labels
    assert labels["hyperopt-tpe-s4" + OWN_INIT] == {"startup": 4, "trial_init": "independent"}
    assert "trial_init" not in labels["hsmpi"] and "trial_init" not in labels["hsmpi-pbt"]
    _, chosen, _, _ = plan(parse(["--trial-init", "independent", "--methods", "hsmpi", "random"]))
    assert [m.label for m in chosen] == ["hsmpi", "random" + OWN_INIT]


@pytest.mark.parametrize("fn,options", [
    (methods.random_search, {}),
    (methods.hyperopt_tpe, {}),
    (methods.hyperopt_tpe, {"startup": 2}),
    (methods.optuna_tpe, {}),
    (methods.optuna_hyperband, {}),
])
def test_sequential_baselines_spend_the_budget_and_choose_on_validation(problem: Problem, fn: object,
                                                                        options: dict[str, object]) -> None:
    if fn in (methods.hyperopt_tpe,):
        pytest.importorskip("hyperopt")
    if fn in (methods.optuna_tpe, methods.optuna_hyperband):
        pytest.importorskip("optuna")
    out = fn(problem, SerialComm(), options)  # type: ignore[operator]
    assert out.epochs == problem.budget  # S x M, no more and (here) no less
    assert out.curve[-1][0] == problem.budget
    best = [c[1] for c in out.curve]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))  # best-so-far never rises
    assert math.isfinite(out.test) and out.val >= best[-1]
    check_hparams(problem.task.space, out.hp)  # the chosen hyperparameters lie in the space


@pytest.mark.parametrize("options, objective", [({}, None), ({"objective": None}, "within")])
def test_hsmpi_selects_on_the_loss_as_the_baselines_do_unless_told_the_tasks_objective(
        tmp_path: Path, options: dict[str, object], objective: str | None) -> None:
    """On a task whose objective is a metric, the benchmark's hsmpi still selects on the validation loss, as every
    baseline's trials do; `objective: None` (the task-objective variants) follows the task's."""
    task = f"{ROOT / 'tests' / 'tasks_for_tests.py'}:Coarse"
    p = Problem(task, seed=1, population=4, epochs=4, sessions=2, workdir=str(tmp_path))
    methods.hsmpi_method(p, SerialComm(), options)
    with h5py.File(tmp_path / "results.h5") as f:
        assert f["history"].attrs.get("objective") == objective
        val, winners = f["history/val_loss"][()], f["history/winner"][()]
        if objective is None:
            assert all(val[k, w] == val[k].min() for k, w in enumerate(winners))


def test_hsmpi_without_a_folder_leaves_no_temporary_files_behind(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that calls the benchmark's hsmpi without a folder gets its numbers, and the run's files go with
    the temporary folder they were written to."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = methods.hsmpi_method(Problem("regression1d", seed=1, population=2, epochs=2, sessions=1), SerialComm(), {})
    assert math.isfinite(out.test) and "results" not in out.extra
    assert list(tmp_path.iterdir()) == []


def test_every_method_is_charged_for_loading_the_data(tmp_path: Path) -> None:
    """hsmpi loads the task's data inside the run it is timed on; a baseline's trials train on data the benchmark
    loaded before, so its cell adds what that took: every method's seconds cover the same work."""
    from tasks_for_tests import SLOW_DATA_SECONDS

    task = f"{ROOT / 'tests' / 'tasks_for_tests.py'}:SlowData"
    p = Problem(task, seed=1, population=2, epochs=1, sessions=1, workdir=str(tmp_path))
    assert p.load_seconds >= SLOW_DATA_SECONDS
    assert methods.random_search(p, SerialComm(), {}).seconds >= SLOW_DATA_SECONDS
    assert methods.hsmpi_method(p, SerialComm(), {}).seconds >= SLOW_DATA_SECONDS


def test_hyperopt_default_startup_is_named_random_below_twenty(problem: Problem) -> None:
    pytest.importorskip("hyperopt")
    out = methods.hyperopt_tpe(problem, SerialComm(), {})
    assert out.extra["startup_trials"] == 20 and out.extra["random_only"] is True
    scaled = methods.hyperopt_tpe(problem, SerialComm(), {"startup": 2})
    assert scaled.extra["random_only"] is False


@pytest.mark.parametrize("threads", [1, 2])
def test_hyperband_prunes_stops_at_the_budget_and_repeats_itself(threads: int) -> None:
    """The same problem twice gives the same trials (brackets come from a fixed study name)."""
    pytest.importorskip("optuna")
    p = Problem("diabetes", seed=0, population=4, epochs=9, sessions=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the pruning decisions follow the losses' last bits, which follow the threads
    try:
        first = methods.optuna_hyperband(p, SerialComm(), {})
        again = methods.optuna_hyperband(p, SerialComm(), {})
    finally:
        torch.set_num_threads(before)
    assert first.epochs == again.epochs == p.budget
    assert first.extra["trials"] == again.extra["trials"] and first.test == again.test
    assert first.extra["trials"] > p.population  # pruned trials leave room for more


def test_random_search_is_reproducible(problem: Problem) -> None:
    a = methods.random_search(problem, SerialComm(), {})
    b = methods.random_search(problem, SerialComm(), {})
    assert a.test == b.test and a.hp == b.hp


def test_wilcoxon_and_tables() -> None:
    pytest.importorskip("scipy")
    a = np.arange(10, dtype=float)
    assert tables.wilcoxon_p(a, a + 1) < 0.01
    assert math.isnan(tables.wilcoxon_p(a, a))
    cells = {("t", "hsmpi"): {s: {"test": 1.0 + s, "epochs": 8, "seconds": 1.0, "ranks": 2} for s in range(4)},
             ("t", "random"): {s: {"test": 2.0 + s, "epochs": 8, "seconds": 2.0, "ranks": 1} for s in range(4)}}
    rows = tables.task_table(cells, "t", ["hsmpi", "random"])
    assert rows[2].startswith("| hsmpi | 4 | 2.5 |")
    assert "| 4/4 |" in rows[3]
    summary = tables.summary_rows(cells, ["t"], ["hsmpi", "random"])
    assert "(-29%)" in summary[3]  # hsmpi's median 2.5 against 3.5


def test_the_goal_rows_name_who_separates_from_hsmpi_and_count_per_method() -> None:
    """Paired seeds decide: a method worse on every seed is beaten, one better on every seed beats hsmpi, and one
    that is worse by a hair on half the seeds and better on the others separates from nothing."""
    pytest.importorskip("scipy")
    seeds = range(12)

    def cells_of(values: dict[int, float], seconds: float = 1.0) -> dict[int, dict[str, Any]]:
        return {s: {"test": v, "seconds": seconds} for s, v in values.items()}

    base = {s: 1.0 + 0.1 * s for s in seeds}
    cells = {("a", "hsmpi"): cells_of(base, 2.0),
             ("a", "random"): cells_of({s: v + 0.5 for s, v in base.items()}),
             ("a", "propulate"): cells_of({s: v + (0.01 if s % 2 else -0.01) for s, v in base.items()}, 3.0),
             ("b", "hsmpi"): cells_of(base),
             ("b", "random"): cells_of({s: v - 0.2 for s, v in base.items()}),
             ("b", "propulate"): cells_of({s: v + 0.3 for s, v in base.items()})}
    rows = tables.goal_rows(cells, ["a", "b", "no-such-task"], ["hsmpi", "random", "propulate"])
    share = tables.lowest_share(cells, "a", ["hsmpi", "random", "propulate"])
    assert 0 < share < 1  # propulate's median is a hair above or below hsmpi's, by the seeds drawn
    assert rows[2] == f"| a | propulate (1.55) | {share:.0%} | random | none | 0.55, 0.54 (propulate) | 2.0, 3.0 |"
    assert rows[3].startswith("| b | random (1.35) | 0% | propulate | random | 0.55, 0.55 (random) |")
    assert "Over 2 tasks: hsmpi has the lowest median on 0, an IQR no wider than the lowest other method's on 1" \
        in rows[5]
    assert rows[-2:] == ["- random: 1 / 1", "- propulate: 1 / 0"]


def test_the_share_of_resampled_seeds_where_hsmpi_has_the_lowest_median() -> None:
    """Lower on every seed: the lowest in every resample; higher on every seed, or equal (a tie is not the
    lowest): in none; without another method or shared seeds, not defined."""
    base = {s: {"test": 1.0 + 0.1 * s} for s in range(20)}
    shifted = {d: {s: {"test": c["test"] + d} for s, c in base.items()} for d in (-0.05, 0.05)}
    cells = {("t", "hsmpi"): base, ("t", "lower"): shifted[-0.05], ("t", "higher"): shifted[0.05],
             ("t", "same"): dict(base), ("u", "hsmpi"): {0: {"test": 1.0}}, ("u", "other"): {1: {"test": 1.0}}}
    assert tables.lowest_share(cells, "t", ["hsmpi", "higher"]) == 1.0
    assert tables.lowest_share(cells, "t", ["hsmpi", "higher", "lower"]) == 0.0
    assert tables.lowest_share(cells, "t", ["hsmpi", "same"]) == 0.0
    assert math.isnan(tables.lowest_share(cells, "t", ["hsmpi"]))
    assert math.isnan(tables.lowest_share(cells, "u", ["hsmpi", "other"]))  # no seed in common
    # Half the seeds a hair lower, half a hair higher: the median's side depends on the draw.
    mixed = {s: {"test": c["test"] + (0.01 if s % 2 else -0.01)} for s, c in base.items()}
    assert 0.2 < tables.lowest_share({**cells, ("t", "mixed"): mixed}, "t", ["hsmpi", "mixed"]) < 0.8


def test_compare_joins_cells_files_into_the_medians_and_the_goal_check(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Cells of one run split over two files (a cell in both, the same) give the tables of the whole; a method
    with fewer seeds is named; the same cell with two values, a missing file or another CSV is one error line."""
    pytest.importorskip("scipy")
    from benchmarks.quality import compare

    cells = {("t", "hsmpi"): {s: {"test": 1.0 + s, "seconds": 2.0} for s in range(6)},
             ("t", "random"): {s: {"test": 1.5 + s, "seconds": 1.0} for s in range(5)}}
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    tables.write_csv(cells, str(whole))
    tables.write_csv({("t", "hsmpi"): {0: cells[("t", "hsmpi")][0]}}, str(part))
    assert compare.main([str(part), str(whole)]) == 0
    out = capsys.readouterr().out
    assert "- t: the methods have different seeds (hsmpi 6, random 5)" in out
    assert "| hsmpi | 3.5 |" in out and "| random | 3.5 (+0%) |" in out  # medians over each method's own seeds
    # The medians tie (a tie is not the lowest), but on the five shared seeds hsmpi is lower on each: the lowest
    # in every resample of them, and significantly better.
    assert "| t | random (3.5) | 100% | random | none |" in out

    (tmp_path / "other.csv").write_text("task,method,seed,test_loss,seconds\nt,hsmpi,0,9.0,1.000\n")
    assert compare.main([str(whole), str(tmp_path / "other.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"benchmarks.quality.compare: t hsmpi seed 0: test loss 1.0 in {whole} "
                                               f"but 9.0 in {tmp_path / 'other.csv'}")
    assert compare.main([str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert compare.main([str(tmp_path / "x.csv")]) == 2
    assert "is not a benchmark cells file" in capsys.readouterr().err
    assert compare.main([str(whole), "--methods", "random"]) == 2
    assert "--methods must include hsmpi" in capsys.readouterr().err
    # --seeds keeps one seed range: seeds 2-3 give the medians of those two (hsmpi 3.5, random 4.0), both methods
    # with the same seeds; a range that holds no hsmpi cell, or is no range, is one error line.
    assert compare.main([str(whole), "--seeds", "2-3"]) == 0
    out = capsys.readouterr().out
    assert "have different seeds" not in out and "| hsmpi | 3.5 |" in out and "| random | 4 (-12%) |" in out
    assert compare.main([str(whole), "--seeds", "5"]) == 0
    assert "| hsmpi | 6 |" in capsys.readouterr().out
    assert compare.main([str(whole), "--seeds", "7-9"]) == 2
    assert capsys.readouterr().err.strip() == ("benchmarks.quality.compare: the cells hold no hsmpi rows of seeds 7-9 "
                                               "to compare the methods with")
    for bad in ("3-2", "a-b", "4-"):
        with pytest.raises(SystemExit):
            compare.main([str(whole), "--seeds", bad])
        assert f"{bad!r} is not a seed range such as 10-39" in capsys.readouterr().err


def test_compare_remakes_the_docs_table_of_every_method_at_32_x_60(capsys: pytest.CaptureFixture[str]) -> None:
    """The command docs/benchmarks.md gives for its one-machine 32 x 60 table, on the cells in docs/data."""
    pytest.importorskip("scipy")
    from benchmarks.quality import compare

    data = ROOT / "docs" / "data"
    files = ["every-method-32x60-seeds-0-19-2026-12-06.csv", "hsmpi-propulate-32x60-seeds-0-9-2026-12-05.csv",
             "wall-clock-32x60-2026-12-05.csv"]
    assert compare.main([str(data / f) for f in files] + ["--tasks", "regression1d", "breast-cancer"]) == 0
    out = capsys.readouterr().out
    assert "different seeds" not in out
    assert "| regression1d | hsmpi (0.0008427) | 96% |" in out
    assert "| breast-cancer | hyperopt-tpe-s8 (0.1046) | 19% |" in out
    assert compare.main([str(data / f) for f in files] + ["--tasks", "regression1d", "breast-cancer", "--methods",
                                                          "hsmpi", "hsmpi-pbt", "hyperopt-tpe-s8", "--paired"]) == 0
    out = capsys.readouterr().out  # the docs' table: the seeds where hsmpi is better / worse, the Wilcoxon p
    assert "| hsmpi-pbt | 0.001131 (14/6, 0.030) | 0.1046 (14/6, 0.28) |" in out
    assert "| hyperopt-tpe-s8 | 0.001921 (17/3, <0.001) | 0.1046 (16/4, 0.017) |" in out


EIGHT_TASKS = {  # "Against the bar": the cells files of each budget's eight-task table, and what it reads
    "16x30": (["batched-16x30-seeds-0-39-2026-12-06.csv", "batched-16x30-seeds-40-79-2026-12-06.csv",
               "batched-pbt-16x30-seeds-40-79-2026-12-06.csv", "external-16x30-seeds-0-39-2026-12-03.csv",
               "external-16x30-seeds-40-79-2026-12-06.csv", "digits-cnn-16x30-seeds-0-39-2026-12-06.csv"],
              "hyperopt-tpe-s4", 8, [6, 6, 6, 6, 6, 7], 1,
              ["| digits-cnn | hsmpi (0.02228) | 38% | optuna-tpe, propulate | none | "
               "0.0164, 0.0129 (hyperopt-tpe-s4) |"]),
    "32x60": (["batched-32x60-seeds-0-39-2026-12-06.csv", "baselines-32x60-seeds-0-39-2026-12-06.csv",
               "fresh-32x60-seeds-40-79-2026-12-06.csv", "fresh-32x60-seeds-40-79-three-more-tasks-2026-12-06.csv",
               "fresh-32x60-seeds-40-79-friedman1-2026-12-06.csv", "digits-cnn-32x60-seeds-0-19-2026-12-07.csv"],
              "hyperopt-tpe-s8", 6, [8, 7, 6, 7, 7, 7], 2,
              ["| moons-schedule | optuna-hyperband (0.2294) |", "| digits | hsmpi-pbt (0.07432) |",
               "| digits-cnn | hsmpi (0.01552) | 53% | random, hyperopt-tpe, optuna-hyperband, propulate | none | "
               "0.0153, 0.0178 (hsmpi-pbt) |"]),
    # with the defaults of 2026-12-07 (the greedy ensemble's new weights): one file per budget
    "16x30-greedy-weights": (["bar-16x30-2026-12-07.csv"], "hyperopt-tpe-s4", 8, [7, 6, 7, 6, 6, 7], 1,
                             ["| digits-cnn | hsmpi (0.02232) | 44% | random, hyperopt-tpe-s4, optuna-tpe, propulate "
                              "| none | 0.0158, 0.0129 (hyperopt-tpe-s4) |", "| moons-schedule | hsmpi (0.2316) |"]),
    "32x60-greedy-weights": (["bar-32x60-2026-12-07.csv"], "hyperopt-tpe-s8", 7, [8, 7, 7, 7, 7, 7], 1,
                             ["| moons-schedule | hsmpi (0.2293) |", "| digits | hsmpi (0.07401) |",
                              "| friedman1 | hsmpi-pbt (0.06248) |",
                              "| digits-cnn | hsmpi (0.01556) | 53% | random, hyperopt-tpe, hyperopt-tpe-s8, "
                              "optuna-hyperband, propulate | none | 0.0153, 0.017 (hsmpi-pbt) |"]),
}


@pytest.mark.parametrize("budget", sorted(EIGHT_TASKS))
def test_compare_remakes_the_docs_reading_of_all_eight_tasks(budget: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The commands of "Against the issue's bar" for the eight tasks, on the cells in docs/data: the lowest
    median on all eight at 16 x 30 and six at 32 x 60 (with the greedy ensemble's new weights, eight and
    seven), each external tool significantly worse on six tasks or more, and none better."""
    pytest.importorskip("scipy")
    from benchmarks.quality import compare

    files, hyperopt_setting, lowest, counts, against_pbt, rows = EIGHT_TASKS[budget]
    external = ["random", "hyperopt-tpe", hyperopt_setting, "optuna-tpe", "optuna-hyperband", "propulate"]
    assert compare.main([str(ROOT / "docs" / "data" / f) for f in files]
                        + ["--methods", "hsmpi", "hsmpi-pbt", *external]) == 0
    out = capsys.readouterr().out
    assert f"Over 8 tasks: hsmpi has the lowest median on {lowest}," in out
    assert all(f"- {m}: {n} / 0" in out for m, n in zip(external, counts))
    assert f"- hsmpi-pbt: {against_pbt} / 0" in out
    assert all(row in out for row in rows)


def test_power_draws_more_seeds_from_the_cells_and_applies_the_benchmarks_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Better on every seed: significant in every drawn seed set, worse in none; a method better on every seed:
    the other way round; a coin toss of a hair either way: rarely either, and hsmpi's median the lowest in
    about half the draws at every size. Bad arguments and cells without hsmpi are one error line."""
    pytest.importorskip("scipy")
    from benchmarks.quality import power

    base = {s: {"test": 1.0 + 0.1 * s, "seconds": 1.0} for s in range(12)}
    worse = {s: {"test": c["test"] + 0.5, "seconds": 1.0} for s, c in base.items()}
    toss = {s: {"test": c["test"] + (0.01 if s % 2 else -0.01), "seconds": 1.0} for s, c in base.items()}
    assert power.separation_shares(base, worse, 40, 50) == (1.0, 0.0)
    assert power.separation_shares(worse, base, 40, 50) == (0.0, 1.0)
    up, down = power.separation_shares(base, toss, 40, 200)
    assert up < 0.3 and down < 0.3
    assert all(math.isnan(x) for x in power.separation_shares(base, {99: base[0]}, 40, 10))
    # A median that sits a hair above or below stays a toss at any size; by default, as many seeds as ran.
    pair = {("t", "hsmpi"): base, ("t", "toss"): toss}
    for size in (40, 200):
        assert 0.3 < tables.lowest_share(pair, "t", ["hsmpi", "toss"], size=size) < 0.7
    assert tables.lowest_share(pair, "t", ["hsmpi", "toss"]) == tables.lowest_share(pair, "t", ["hsmpi", "toss"],
                                                                                     size=12)

    path = tmp_path / "cells.csv"
    tables.write_csv({("t", "hsmpi"): base, ("t", "random"): worse, ("t", "propulate"): toss}, str(path))
    assert power.main([str(path), "--sizes", "20", "40", "--draws", "50"]) == 0
    out = capsys.readouterr().out
    assert "| random | 12/0, <0.001 | 100% (0%) | 100% (0%) |" in out
    assert "| propulate | 6/6, " in out
    assert "| hsmpi's median the lowest of all | | " in out
    assert power.main([str(path), "--seeds", "0-5", "--sizes", "20", "--draws", "20"]) == 0
    assert "| random | 6/0, " in capsys.readouterr().out  # only the range's six seeds are drawn from

    assert power.main([str(path), "--methods", "random", "propulate"]) == 2
    assert capsys.readouterr().err.strip() == \
        "benchmarks.quality.power: --methods must include hsmpi, the method the others are compared with"
    assert power.main([str(path), "--tasks", "t", "other"]) == 2
    assert capsys.readouterr().err.strip() == \
        "benchmarks.quality.power: no cells of hsmpi and another method for other"
    assert power.main([str(path), "--methods", "hsmpi"]) == 2
    assert "no cells of hsmpi and another method for t" in capsys.readouterr().err
    tables.write_csv({("t", "random"): worse}, str(tmp_path / "no-hsmpi.csv"))
    assert power.main([str(tmp_path / "no-hsmpi.csv")]) == 2
    assert "the cells hold no hsmpi rows" in capsys.readouterr().err
    assert power.main([str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        power.main([str(path), "--sizes", "1"])
    assert "--sizes must be 2 or more seeds" in capsys.readouterr().err


def test_p_values_are_printed_as_in_the_docs() -> None:
    assert [tables.format_p(p) for p in (0.0004, 0.0297, 0.0999, 0.1, 0.284, 1.0, math.nan)] == \
        ["<0.001", "0.030", "0.099", "0.10", "0.28", "1.00", "n/a"]


def test_the_cells_csv_holds_every_cell_once_in_order(tmp_path: Path) -> None:
    cells = {("t", "random"): {s: {"test": 2.0 + s / 3, "seconds": 2.0} for s in (1, 0)},
             ("b", "hsmpi/m3"): {0: {"test": math.inf, "seconds": 1.234}}}
    path = tmp_path / "cells.csv"
    assert tables.write_csv(cells, str(path)) == 3
    rows = path.read_text().splitlines()
    assert rows == ["task,method,seed,test_loss,seconds", "b,hsmpi/m3,0,inf,1.234", "t,random,0,2.0,2.000",
                    f"t,random,1,{2.0 + 1 / 3!r},2.000"]
    assert float(rows[-1].split(",")[3]) == 2.0 + 1 / 3  # the loss to the last bit


def test_quick_benchmark_runs_end_to_end_under_mpirun(tmp_path: Path) -> None:
    """The --quick smoke run of the whole benchmark (every method) on 2 ranks, and a second call reuses it."""
    for lib in ("hyperopt", "optuna", "propulate", "scipy"):
        pytest.importorskip(lib)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*mpirun_cmd(2), sys.executable, "-m", "benchmarks.quality", "--quick", "--tasks", "regression1d",
           "diabetes", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    for label in ("hsmpi", "hsmpi-pbt", "random", "hyperopt-tpe", "optuna-tpe", "optuna-hyperband", "propulate"):
        assert f"| {label} |" in text
    assert "## hsmpi against each method" in text and "| regression1d | " in text and "- propulate: " in text
    cells = list(tmp_path.glob("cells/*/*/seed*.json"))
    assert len(cells) == 2 * 2 * 8  # tasks x seeds x methods
    for path in cells:
        cell = json.loads(path.read_text())
        assert cell["epochs"] <= 4 * 4 and cell["settings"]["population"] == 4
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "figure1b.png").stat().st_size > 10_000
    csv_rows = (tmp_path / "cells.csv").read_text().splitlines()
    assert csv_rows[0] == "task,method,seed,test_loss,seconds" and len(csv_rows) == 1 + 32
    # a cell of another budget (or other code) in the same folder is neither reused nor counted in the tables
    stranger = json.loads((tmp_path / "cells/regression1d/hsmpi/seed0.json").read_text())
    stranger["settings"].update(seed=7, population=99)
    stranger["test"] = 123.0
    (tmp_path / "cells/regression1d/hsmpi/seed7.json").write_text(json.dumps(stranger))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert again.returncode == 0 and "32 of 32 cells stored" in again.stdout
    text = (tmp_path / "results.md").read_text()
    assert "| 123 |" not in text and text.count("| hsmpi | 2 |") == 2  # both tasks' hsmpi rows: seeds 0, 1
    assert len((tmp_path / "cells.csv").read_text().splitlines()) == 1 + 32  # the stranger is not a row


def test_the_benchmark_runs_every_method_on_a_task_of_ones_own(tmp_path: Path) -> None:
    """`--tasks path/file.py:Class` benchmarks a user's task: its cells get a folder of their own, and a task that
    is regression1d under another name gives every method regression1d's results to the bit."""
    task = tmp_path / "mine.py"
    task.write_text("from hsmpi.tasks.regression1d import Regression1D\n\n\nclass Same(Regression1D):\n    pass\n")
    spec = f"{task}:Same"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmarks.quality", "--quick", "--seeds", "1", "--tasks", "regression1d", spec,
           "--methods", "hsmpi", "random", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method in ("hsmpi", "random"):
        theirs = json.loads((tmp_path / f"out/cells/regression1d/{method}/seed0.json").read_text())
        ours = json.loads((tmp_path / f"out/cells/mine.Same/{method}/seed0.json").read_text())
        assert ours["settings"]["task"] == spec and math.isfinite(ours["test"])
        assert ours["test"] == theirs["test"] and ours["epochs"] == theirs["epochs"]
    assert (tmp_path / "out/runs/mine.Same/hsmpi/seed0/results.h5").is_file()
    assert f"## {spec}" in (tmp_path / "out/results.md").read_text()


def test_a_task_it_cannot_load_or_an_unknown_method_is_one_clear_error_under_mpirun(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*mpirun_cmd(2), sys.executable, "-m", "benchmarks.quality", "--quick", "--tasks", "regression1d",
           f"{tmp_path}/absent.py:Task", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.count("error: task file") == 1, done.stderr  # once, not once per rank
    assert not (tmp_path / "out").exists()
    cmd = [*mpirun_cmd(2), sys.executable, "-m", "benchmarks.quality", "--quick", "--methods", "hsmpi", "rnd",
           "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.count("unknown method(s) ['rnd']") == 1, done.stderr


def test_a_task_only_some_ranks_can_load_ends_every_rank_with_one_error(tmp_path: Path) -> None:
    """A task file one node cannot import (here rank 1's constructor fails): every rank stops at once with the
    first rank's error, none waits in a collective for a rank that left."""
    task = tmp_path / "onerank.py"
    task.write_text("import os\nfrom hsmpi.tasks.regression1d import Regression1D\n\n\nclass OneRank(Regression1D):\n"
                    "    def __init__(self):\n"
                    "        if '1' in (os.environ.get('PMI_RANK'), os.environ.get('OMPI_COMM_WORLD_RANK')):\n"
                    "            raise RuntimeError('not on this node')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*mpirun_cmd(2), sys.executable, "-m", "benchmarks.quality", "--quick", "--methods", "random", "--tasks",
           f"{task}:OneRank", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("error: on another rank: task") == 1 and "not on this node" in done.stderr


def test_a_stored_cell_is_reused_only_under_the_same_code(tmp_path: Path) -> None:
    from benchmarks.quality.runner import Cell, Method, code_fingerprint, load_cell, settings_of, write_json

    cell = Cell("friedman1", 0, Method("random", lambda *_: None))
    settings = settings_of(cell, 4, 4, 2)
    assert settings["code"] == code_fingerprint() and len(code_fingerprint()) == 16
    path = str(tmp_path / "cell.json")
    write_json(path, {"settings": settings, "test": 1.0})
    assert load_cell(path, settings_of(cell, 4, 4, 2)) is not None
    write_json(path, {"settings": {**settings, "code": "0" * 16}, "test": 1.0})
    assert load_cell(path, settings_of(cell, 4, 4, 2)) is None


def test_benchmark_refuses_propulate_on_one_rank(tmp_path: Path) -> None:
    pytest.importorskip("propulate")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmarks.quality", "--quick", "--tasks", "diabetes", "--methods", "propulate",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 2 and "Propulate needs at least 2 MPI ranks" in done.stderr


def test_the_margin_replay_gives_the_run_its_own_choice_at_its_own_margin(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """benchmarks.quality.margins replays --returns auto from results files: at AUTO_MARGIN it must return what
    each run returned, and with a margin of +inf (never the average) and -1e6 (always) the two candidates."""
    import hsmpi
    from benchmarks.quality import margins
    from hsmpi.engine.average import AUTO_MARGIN

    returned = {}
    for seed in (0, 1, 2):  # seed 2 names the loss as its objective, as the benchmark's runs do: it is kept
        r = hsmpi.run("diabetes", population=4, epochs=4, sessions=2, seed=seed, threads=1, log=None,
                      out=str(tmp_path / f"seed{seed}"), export_top=0, objective="loss" if seed == 2 else None)
        returned[seed] = (r.test_loss, r.member_test_loss, r.ensemble_test_loss)
    hsmpi.run("diabetes", population=4, epochs=4, sessions=2, seed=9, threads=1, log=None, returns="member",
              out=str(tmp_path / "member"), export_top=0)  # not an `auto` run: left out
    runs = margins.read(str(tmp_path / "*" / "results.h5"))
    assert list(runs) == [("diabetes", 4)] and sorted(runs["diabetes", 4]) == [0, 1, 2]
    margins.main([str(tmp_path / "*" / "results.h5"), "--margins", str(AUTO_MARGIN), "inf", "-1000000.0"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip().split(" ")[0] for c in row.strip("|").split("|")[3:]]
    median = lambda i: float(np.median([v[i] for v in returned.values()]))  # noqa: E731
    assert [float(c) for c in cells] == pytest.approx([median(0), median(1), median(2)], rel=1e-3)
    # diabetes is a regression on 88 validation samples, fewer than the greedy ensemble needs: the margin
    # decides it at any threshold
    assert all(v[4] == 88 and not v[6] for v in runs["diabetes", 4].values())
    margins.main([str(tmp_path / "*" / "results.h5"), "--few", "0", "89"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip().split(" ")[0] for c in row.strip("|").split("|")[3:]]
    assert [float(c) for c in cells] == pytest.approx([median(0), median(0)], rel=1e-3)
    # breast-cancer's 100 labelled samples: the default returns the average; a threshold of 0 replays the margin
    classes = tmp_path / "classes"
    for seed in (0, 1):
        r = hsmpi.run("breast-cancer", population=4, epochs=4, sessions=2, seed=seed, threads=1, log=None,
                      out=str(classes / f"seed{seed}"), export_top=0)
        assert r.returned == "average"
    kept = margins.read(str(classes / "*" / "results.h5"))["breast-cancer", 4]
    assert all(v[4] == 100 and v[6] for v in kept.values())
    margins.main([str(classes / "*" / "results.h5"), "--few", "0", "128"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip().split(" ")[0] for c in row.strip("|").split("|")[3:]]
    by_margin = [v[3] if v[0] < v[1] - AUTO_MARGIN * abs(v[1]) else v[2] for v in kept.values()]
    assert [float(c) for c in cells] == pytest.approx([float(np.median(by_margin)),
                                                       float(np.median([v[3] for v in kept.values()]))], rel=1e-3)
    for folder, key in ((tmp_path / "seed0", ("diabetes", 4)), (classes / "seed0", ("breast-cancer", 4))):
        with h5py.File(folder / "results.h5", "a") as f:  # as written before these were
            del f["test/judged_samples"], f["test/member_val_median"], f["test/judged_classes"]
        now = runs[key][0] if key[0] == "diabetes" else kept[0]
        older = margins.read(str(folder.parent / "*" / "results.h5"))[key][0]
        assert older[:5] == now[:5] and older[6] == now[6]
        assert older[5] == pytest.approx(now[5], rel=1e-5)
    for seed in (0, 1, 2):  # the paired replay rebuilds the population: its mean is the file's two scores' gap
        path = tmp_path / f"seed{seed}" / "results.h5"
        with h5py.File(path, "r") as f:
            gap = float(f["test/ensemble_val_loss"][()] - f["test/member_val_cv"][()])
        mean, error = margins.paired(str(path))
        assert mean == pytest.approx(gap, rel=1e-4, abs=1e-7) and error > 0
    # The disagreement: for a squared error, the members' mean loss minus their average's is their spread
    # around the average (the ensemble's ambiguity), which is computed here without any labels.
    from hsmpi.engine.average import Average
    from hsmpi.engine.data import Data
    from hsmpi.tasks import load_task

    task = load_task("diabetes")
    train, _, _ = task.data(0)
    inputs, targets = [torch.cat(t) for t in zip(*Data(train, torch.device("cpu")).in_order())]
    average = Average.from_results(str(tmp_path / "seed0" / "results.h5"), members=[0, 1, 2, 3])
    with torch.no_grad():
        outputs = torch.stack([m(inputs) for m in average.members]).double()
        spread = float(((outputs - outputs.mean(0)) ** 2).mean())
        targets = targets.double()
        averaged_loss = float(((outputs.mean(0) - targets.view_as(outputs[0])) ** 2).mean())
    assert margins.disagreement(str(tmp_path / "seed0" / "results.h5")) == pytest.approx(
        spread / averaged_loss, rel=1e-3)
    # K = 0 is the default margin; --seeds keeps the seeds asked for.
    margins.main([str(tmp_path / "*" / "results.h5"), "--disagreement", "0", "--seeds", "0", "2"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.split("|")[3].strip() == "2"
    kept = [returned[s][0] for s in (0, 1)]
    assert float(row.split("|")[4].split()[0]) == pytest.approx(float(np.median(kept)), rel=1e-3)
    # regression1d's 256 validation samples: auto returns the greedy ensemble, which --returned sets against
    # the margin rule replayed
    greedy = tmp_path / "greedy"
    losses = []
    for seed in (0, 1):
        r = hsmpi.run("regression1d", population=4, epochs=4, sessions=2, seed=seed, threads=1, log=None,
                      out=str(greedy / f"seed{seed}"), export_top=0)
        assert r.returned == "greedy"
        losses.append(r.test_loss)
    rows = margins.read(str(greedy / "*" / "results.h5"))["regression1d", 4]
    margins.main([str(greedy / "*" / "results.h5"), "--returned"])
    cells = capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")
    by_margin = [v[3] if v[0] < v[1] - AUTO_MARGIN * abs(v[1]) else v[2] for v in rows.values()]
    assert float(cells[3]) == pytest.approx(float(np.median(by_margin)), rel=1e-3)
    assert float(cells[4].split()[0]) == pytest.approx(float(np.median(losses)), rel=1e-3)
    better, worse = sum(g < m for g, m in zip(losses, by_margin)), sum(g > m for g, m in zip(losses, by_margin))
    assert f"({better}/{worse}" in cells[4]


def _bagged_table(text: str) -> dict[str, list[str]]:
    """A table of the bagged section: task -> its cells, in order."""
    return {r.split(" | ")[0].lstrip("| "): r.strip(" |").split(" | ")[1:] for r in text.splitlines()
            if r.startswith("| ") and not r.startswith("| task")}


def _bagged_cell(stored: dict[Any, dict[int, dict[str, Any]]], task: str, seeds: range,
                 variant: str = "hsmpi/bags-20", against: str = "hsmpi") -> str:
    """One cell as the section writes it: the two medians (`against`'s, then `variant`'s), the seeds where
    the variant is better / worse, p."""
    import statistics

    from scipy.stats import wilcoxon

    base = [stored[(task, against)][s]["test"] for s in seeds]
    bags = [stored[(task, variant)][s]["test"] for s in seeds]
    better, worse = sum(y < x for x, y in zip(base, bags)), sum(y > x for x, y in zip(base, bags))
    p = wilcoxon(bags, base).pvalue
    return f"{statistics.median(base):.4g}, {statistics.median(bags):.4g} ({better}/{worse}, p {tables.format_p(p)})"


@pytest.mark.filterwarnings("ignore:Exact p-value calculation")  # a seed where both return the same ensemble
def test_the_docs_tables_of_bagged_ensemble_selection_are_the_cells_in_docs_data() -> None:
    """docs/benchmarks.md, "Bagged ensemble selection": each cell of its tables (the medians of the defaults and of
    --greedy-bags 20, the seeds where the bags are better / worse, p) is what docs/data's cells give, per budget
    and seed set; and the defaults' cells at 32 x 60 and 16 x 30 are those of the eighty-seed tables, to the bit."""
    from benchmarks.quality.compare import read_cells

    data, text = ROOT / "docs" / "data", (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## Bagged ensemble selection"):text.index("## Bags that judge their size out of bag")]
    main, between = section.split("**Between the two budgets.**")
    tasks = {"digits", "moons-schedule", "sparse-regression", "friedman1", "regression1d"}
    eighty = {"32x60": ["batched-32x60-seeds-0-39-2026-12-06.csv", "fresh-32x60-seeds-40-79-2026-12-06.csv",
                        "fresh-32x60-seeds-40-79-three-more-tasks-2026-12-06.csv",
                        "fresh-32x60-seeds-40-79-friedman1-2026-12-06.csv"],
              "16x30": ["batched-16x30-seeds-0-39-2026-12-06.csv", "batched-16x30-seeds-40-79-2026-12-06.csv"]}
    rows = _bagged_table(main)
    assert set(rows) == tasks
    columns = [("32x60", range(0, 40)), ("32x60", range(40, 80)), ("16x30", range(0, 40)), ("16x30", range(40, 80))]
    for column, (budget, seeds) in enumerate(columns):
        stored = read_cells([str(data / f"greedy-bags-{budget}-seeds-0-79-2026-12-07.csv")] +
                            [str(data / f) for f in eighty[budget]])  # a cell that differed would be an error
        for task, cells in rows.items():
            assert cells[column] == _bagged_cell(stored, task, seeds), (budget, task, seeds)
    rows = _bagged_table(between)
    assert set(rows) == tasks
    for column, budget in enumerate(("32x30", "16x60")):
        stored = read_cells([str(data / f"greedy-bags-{budget}-seeds-0-39-2026-12-07.csv")])
        for task, cells in rows.items():
            assert cells[column] == _bagged_cell(stored, task, range(0, 40)), (budget, task)


@pytest.mark.filterwarnings("ignore:Exact p-value calculation")  # a seed where both return the same ensemble
def test_the_docs_table_of_bags_judged_out_of_bag_is_the_cells_in_docs_data() -> None:
    """docs/benchmarks.md, "Bags that judge their size out of bag": each cell of its table is what docs/data's
    cells give: --greedy-bags 20 --greedy-stop out-of-bag against the defaults per budget and seed set, then
    against the bags in bag over seeds 0-79; the defaults' and the in-bag bags' cells are those stored before."""
    from benchmarks.quality.compare import read_cells

    data, text = ROOT / "docs" / "data", (ROOT / "docs" / "benchmarks.md").read_text()
    start = text.index("## Bags that judge their size out of bag")
    section = text[start:text.index("\n## ", start + 1)]  # up to the next section
    rows = _bagged_table(section)
    assert set(rows) == {"digits", "moons-schedule", "sparse-regression", "friedman1", "regression1d"}
    stored = {budget: read_cells([str(data / f"greedy-oob-{budget}-seeds-0-79-2026-12-07.csv"),
                                  str(data / f"greedy-bags-{budget}-seeds-0-79-2026-12-07.csv")])
              for budget in ("32x60", "16x30")}  # a cell that differed between the two would be an error
    columns = [("32x60", range(0, 40), "hsmpi"), ("32x60", range(40, 80), "hsmpi"),
               ("16x30", range(0, 40), "hsmpi"), ("16x30", range(40, 80), "hsmpi"),
               ("32x60", range(0, 80), "hsmpi/bags-20"), ("16x30", range(0, 80), "hsmpi/bags-20")]
    for task, cells in rows.items():
        assert len(cells) == len(columns), task
        for cell, (budget, seeds, against) in zip(cells, columns):
            assert cell == _bagged_cell(stored[budget], task, seeds, "hsmpi/bags-20-oob", against), \
                (budget, task, seeds, against)


def test_the_docs_table_of_the_closest_calls_on_fresh_seeds_is_the_cells_in_docs_data() -> None:
    """docs/benchmarks.md, "The closest calls on fresh seeds": each cell of its table (the medians, the lowest in
    bold, the seeds where hsmpi is better / worse, p, and the share of resampled seed sets where hsmpi's median is
    the lowest) is what docs/data's cells give, on the fresh seeds alone and pooled with the bar's."""
    from benchmarks.quality.compare import only_seeds, read_cells, seed_range

    data, text = ROOT / "docs" / "data", (ROOT / "docs" / "benchmarks.md").read_text()
    start = text.index("**The closest calls on fresh seeds")
    section = text[start:text.index("**Reading.**", start)]
    rows = [[c.strip() for c in r.strip()[1:-1].split("|")] for r in section.splitlines()
            if r.startswith("| ") and not r.startswith("| cell")]
    assert len(rows) == 18
    tools = {"Optuna-Hyperband": "optuna-hyperband", "Hyperopt-TPE-s4": "hyperopt-tpe-s4", "Propulate": "propulate"}
    label = ""
    for row in rows:
        label = row[0] or label
        task, budget = label.split(", ")
        budget = budget.replace(" ", "")
        seeds = seed_range(row[1])
        fresh = data / f"closest-calls-{budget}-2026-12-08.csv"
        files = [fresh] if row[0] else [data / f"bar-{budget}-2026-12-07.csv", fresh]
        cells = only_seeds(read_cells([str(f) for f in files]), seeds)
        shown = {"hsmpi": row[2], "hsmpi-pbt": row[3]}  # method -> its cell as the table writes it
        for part in row[4].split("; ") if row[4] not in ("not run", "") else []:
            name, rest = part.split(" ", 1)
            shown[tools[name]] = rest
        ran = [m for m, cell in shown.items() if cell not in ("not run", "")]
        assert ran[0] == "hsmpi" and len(ran) >= 2, (label, row[1])
        assert all(set(cells[(task, m)]) == set(seeds) for m in ran), (label, row[1])
        medians = {m: float(np.median([c["test"] for c in cells[(task, m)].values()])) for m in ran}
        lowest = min(medians, key=lambda m: medians[m])
        for m in ran:
            expect = f"{medians[m]:.4g}"
            expect = f"**{expect}**" if m == lowest else expect
            if m != "hsmpi":
                better, worse, p = tables.paired_counts(cells[(task, "hsmpi")], cells[(task, m)])
                expect += f" ({better}/{worse}, {tables.format_p(p)})"
            assert shown[m] == expect, (label, row[1], m)
        assert row[5] == f"{tables.lowest_share(cells, task, ran):.0%}", (label, row[1])
