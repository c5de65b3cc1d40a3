"""The test-loss floor of the tasks whose generator's truth is known (benchmarks.quality.floor)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from benchmarks.quality import floor, tables  # noqa: E402
from hsmpi.tasks.friedman1 import Friedman1  # noqa: E402
from hsmpi.tasks.moons_schedule import MoonsSchedule  # noqa: E402
from hsmpi.tasks.sparse_regression import SparseRegression  # noqa: E402

from conftest import ROOT  # noqa: E402


@pytest.mark.parametrize("seed", [0, 7])
def test_the_floor_is_taken_on_the_tasks_own_test_split(seed: int) -> None:
    """The indices the floor uses, standardised as `split` does, are the test split each task trains against:
    the same inputs and labels (moons) and the same standardised targets (the two regressions)."""
    from sklearn.datasets import make_friedman1, make_moons, make_regression

    x, y = make_moons(n_samples=1000, noise=0.3, random_state=seed)
    train, test = floor.split_indices(len(x), seed)
    inputs, labels = MoonsSchedule().data(seed)[2].tensors
    standard = (x[test] - x[train].mean(0)) / (x[train].std(0) + 1e-8)
    np.testing.assert_allclose(inputs.numpy(), standard, rtol=1e-5, atol=1e-6)
    assert torch.equal(labels, torch.as_tensor(y[test]).long())

    for task, (x, y) in ((Friedman1(), make_friedman1(n_samples=1500, n_features=10, noise=1.0, random_state=seed)),
                         (SparseRegression(), make_regression(n_samples=800, n_features=30, n_informative=5,
                                                              noise=50.0, random_state=seed))):
        train, test = floor.split_indices(len(x), seed)
        targets = task.data(seed)[2].tensors[1].numpy().ravel()
        np.testing.assert_allclose(targets, (y[test] - y[train].mean()) / (y[train].std() + 1e-8), rtol=1e-5,
                                   atol=1e-5)


def test_the_true_functions_are_the_generators_without_noise() -> None:
    """Without noise, make_friedman1's targets are Friedman's function and make_regression's are its inputs times
    the coefficients it returns: then the floor is zero."""
    from sklearn.datasets import make_friedman1, make_regression

    x, y = make_friedman1(n_samples=300, n_features=10, noise=0.0, random_state=3)
    np.testing.assert_allclose(floor.friedman_function(x), y, rtol=1e-12, atol=1e-12)
    x, y, coef = make_regression(n_samples=300, n_features=30, n_informative=5, noise=0.0, random_state=3, coef=True)
    np.testing.assert_allclose(x @ coef, y, rtol=1e-9, atol=1e-9)
    assert floor.regression_floor(x, y, x @ coef, 3) < 1e-18
    # With the generators' noise, the floor is about the noise's share of the targets' variance.
    assert 0.02 < floor.friedman1_floor(0) < 0.08  # noise sd 1 against a target sd of about 5
    assert 0.05 < floor.sparse_regression_floor(0) < 0.3  # noise sd 50: 10-25% of the variance, by seed


def test_the_moons_posterior_goes_from_certain_to_a_coin_toss_as_the_noise_grows() -> None:
    """Half-circles barely blurred are told apart almost surely (a floor near 0); buried in noise, every point
    is a coin toss (log 2). Swapped classes or a wrong density would miss both ends."""
    sharp, blurred = MoonsSchedule(), MoonsSchedule()
    sharp.noise, blurred.noise = 0.05, 20.0
    assert floor.moons_floor(0, sharp) < 1e-3
    assert abs(floor.moons_floor(0, blurred) - math.log(2)) < 0.01
    assert 0.15 < floor.moons_floor(0) < 0.3  # the task's own noise, 0.3: the classes overlap


def test_the_table_and_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each method's excess is its test loss less the floor of the same seed; cells without a task that has a
    floor, or without hsmpi, are one error line."""
    base = {s: floor.moons_floor(s) for s in range(3)}
    cells = {("moons-schedule", "hsmpi"): {s: {"test": f + 0.05, "seconds": 1.0} for s, f in base.items()},
             ("moons-schedule", "random"): {s: {"test": f * 1.2, "seconds": 1.0} for s, f in base.items()}}
    rows = floor.floor_rows(cells, "moons-schedule", ["hsmpi", "random"])
    hsmpi_row = next(r for r in rows if r.startswith("| hsmpi |")).split(" | ")
    random_row = next(r for r in rows if r.startswith("| random |")).split(" | ")
    assert hsmpi_row[4] == "0.05" and hsmpi_row[6].startswith("0/3")  # 0.05 above a floor under 0.3: over 5%
    assert random_row[5] == "20.0%"

    path = tmp_path / "cells.csv"
    tables.write_csv(cells, str(path))
    assert floor.main([str(path)]) == 0
    assert "### moons-schedule" in capsys.readouterr().out
    other = tmp_path / "other.csv"
    tables.write_csv({("digits", "hsmpi"): cells[("moons-schedule", "hsmpi")]}, str(other))
    assert floor.main([str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the tasks with a known floor" in err[0]
    assert floor.main([str(tmp_path / "missing.csv")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_docs_reading_of_moons_schedule_at_32_x_60(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/benchmarks.md, "moons-schedule at 32 x 60": on the cells in docs/data, every method 6.7-9.0% above
    the floor by the median, and hsmpi's excess on friedman1 and sparse-regression the lowest of all."""

    files = ["batched-32x60-seeds-0-39-2026-12-06.csv", "baselines-32x60-seeds-0-39-2026-12-06.csv",
             "fresh-32x60-seeds-40-79-2026-12-06.csv", "fresh-32x60-seeds-40-79-three-more-tasks-2026-12-06.csv",
             "fresh-32x60-seeds-40-79-friedman1-2026-12-06.csv",
             "moons-schedule-32x60-variants-seeds-0-79-2026-12-07.csv"]
    assert floor.main([str(ROOT / "docs" / "data" / f) for f in files]) == 0
    tables_by_task = dict(part.split("\n", 1) for part in capsys.readouterr().out.split("### ")[1:])
    for task, shares in (("moons-schedule", {"hsmpi": "6.8%", "propulate": "6.7%", "optuna-tpe": "9.0%",
                                             "optuna-hyperband": "7.6%", "hsmpi/average": "6.3%"}),
                         ("friedman1", {"hsmpi": "51.4%", "optuna-tpe": "81.3%", "random": "86.8%"}),
                         ("sparse-regression", {"hsmpi": "20.0%", "hyperopt-tpe-s8": "24.4%", "propulate": "30.4%"})):
        rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ") for r in tables_by_task[task].splitlines()
                if r.startswith("| ") and not r.startswith("| method")}
        assert all(rows[m][5] == share for m, share in shares.items()), (task, rows)
        assert all(r[1] == "80" for r in rows.values())


def test_the_oracle_bounds_every_rule_that_chooses_among_the_final_members(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.quality.oracle on a tiny run: the member best on test is no worse than the member best on
    validation or the median member, the floor is there for moons-schedule only, and the csv holds each seed."""
    from benchmarks.quality import oracle

    row = oracle.population_on_test("moons-schedule", 3, 4, 2, 1, str(tmp_path / "run"))
    assert set(row) == set(oracle.COLUMNS) and all(math.isfinite(v) for v in row.values())
    assert row["oracle"] <= min(row["best_on_val"], row["median_member"], row["returned"] + 1e-6)
    assert row["floor"] == floor.moons_floor(3)
    lines = oracle.table({3: {**row, "returned": row["oracle"] + 0.1}, 4: {**row, "returned": row["oracle"] + 0.2}})
    assert lines[2].startswith("| what the run returned") and "| 2/2 |" in lines[5]  # the oracle below both

    path = tmp_path / "o.csv"
    assert oracle.main(["--task", "regression1d", "-S", "3", "-M", "2", "-m", "1", "--seeds", "2", "--first-seed", "5",
                        "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "regression1d, S=3, M=2, m=1, seeds 5-6" in out and "Bayes floor" not in out  # no known floor
    assert [r.split(",")[:2] for r in path.read_text().splitlines()[1:]] == [["regression1d", "5"],
                                                                            ["regression1d", "6"]]
    with pytest.raises(SystemExit):
        oracle.main(["--task", "regression1d", "-M", "2", "-m", "3"])
    assert "1 <= -m <= -M" in capsys.readouterr().err


def test_the_docs_oracle_cells_are_the_benchmarks_own() -> None:
    """docs/data's oracle file: its returned model is the benchmark's hsmpi cell on every seed, to the bit, and on
    moons-schedule the oracle's median is 3.0% below it, still above the floor."""
    from benchmarks.quality.compare import read_cells

    data = ROOT / "docs" / "data"
    cells = read_cells([str(data / "batched-32x60-seeds-0-39-2026-12-06.csv"),
                        str(data / "fresh-32x60-seeds-40-79-2026-12-06.csv")])
    with open(data / "oracle-32x60-2026-12-07.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 320
    assert all(float(r["returned"]) == cells[(r["task"], "hsmpi")][int(r["seed"])]["test"] for r in rows)
    moons = [r for r in rows if r["task"] == "moons-schedule"]
    returned, best, lowest = (statistics.median(float(r[k]) for r in moons) for k in ("returned", "oracle", "floor"))
    assert f"{best / returned - 1:+.1%}" == "-3.0%" and lowest < best


def test_the_docs_oracle_cells_at_16_x_30_are_the_benchmarks_own() -> None:
    """The same at 16 x 30: each returned model is the benchmark's hsmpi cell of seeds 0-39, to the bit."""
    from benchmarks.quality.compare import read_cells

    cells = read_cells([str(ROOT / "docs" / "data" / "batched-16x30-seeds-0-39-2026-12-06.csv")])
    with open(ROOT / "docs" / "data" / "oracle-16x30-2026-12-07.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 280 and {r["task"] for r in rows} == {t for t, m in cells if m == "hsmpi"}
    assert all(float(r["returned"]) == cells[(r["task"], "hsmpi")][int(r["seed"])]["test"] for r in rows)
