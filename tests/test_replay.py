"""benchmarks.quality.replay: return rules replayed on a collected final population give what hsmpi itself
returns with those settings, to the bit, and its cells read beside the benchmark's."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.quality import compare, methods, replay
from benchmarks.quality.runner import hsmpi_defaults
from benchmarks.quality.trial import Problem
from hsmpi.parallel.comm import SerialComm

TASK, SEED = "moons-schedule", 3  # 200 validation samples: the defaults return the greedy ensemble
BUDGET = ["-S", "4", "-M", "2", "-m", "1"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One seed of moons-schedule and one of breast-cancer (100 validation samples: not replayed)."""
    folder = str(tmp_path_factory.mktemp("replay"))
    assert replay.main(["collect", "--dir", folder, *BUDGET, "--seeds", "1", "--first-seed", str(SEED),
                        "--tasks", TASK, "breast-cancer"]) == 0
    return folder


@pytest.mark.parametrize("rule, options", [("defaults", {}), ("bags-20", replay.BAGS), ("bags-20-oob", replay.OOB),
                                           ("blend-oob", replay.BLEND_OOB), ("one-selection", replay.ONE),
                                           ("average", {"returns": "average"})])
def test_a_rule_named_as_a_variant_gives_what_hsmpi_returns_with_its_settings(collected: str, rule: str,
                                                                               options: dict[str, object]) -> None:
    pop = replay.load(replay.cell_path(collected, TASK, 4, 2, 1, SEED))
    outcome = methods.hsmpi_method(Problem(TASK, SEED, 4, 2, 1), SerialComm(), hsmpi_defaults(**options))
    assert replay.RULES[rule][1](pop) == outcome.test
    if rule == "defaults":
        assert pop.returned == outcome.test and outcome.extra["returned"] == "greedy"


def test_the_rules_write_cells_that_compare_reads(collected: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Each rule's cell under its label, the small split skipped; a cell file that disagrees with the
    replay on a cell is refused beside it; a second collect keeps the files it finds."""
    path = str(tmp_path / "r.csv")
    assert replay.main(["rules", "--dir", collected, *BUDGET, "--csv", path,
                        "--rules", "defaults", "one-selection", "bags-20-oob", "blend", "cv-oob",
                        "--seeds", "0-5"]) == 0
    assert "5 cells from 2 collected runs" in capsys.readouterr().out
    cells = compare.read_cells([path])
    assert set(cells) == {(TASK, label) for label in ("hsmpi", "hsmpi/one-selection", "hsmpi/bags-20-oob",
                                                      "hsmpi/blend", "hsmpi/cv-oob")}
    returned = replay.load(replay.cell_path(collected, TASK, 4, 2, 1, SEED)).returned
    assert cells[(TASK, "hsmpi")][SEED]["test"] == returned
    # cv-oob returns one of the two ensembles it chooses between
    assert cells[(TASK, "hsmpi/cv-oob")][SEED]["test"] in (cells[(TASK, "hsmpi/one-selection")][SEED]["test"],
                                                          cells[(TASK, "hsmpi/bags-20-oob")][SEED]["test"])
    other = tmp_path / "other.csv"
    other.write_text(f"task,method,seed,test_loss,seconds\n{TASK},hsmpi,{SEED},{returned + 1e-9!r},1.0\n")
    with pytest.raises(compare.CellsError, match="seed 3: test loss .* but "):
        compare.read_cells([path, str(other)])

    files = sorted(str(p) for p in Path(collected).rglob("*.h5"))
    stamps = [os.stat(p).st_mtime_ns for p in files]
    assert replay.main(["collect", "--dir", collected, *BUDGET, "--seeds", "1", "--first-seed", str(SEED),
                        "--tasks", TASK]) == 0
    assert [os.stat(p).st_mtime_ns for p in files] == stamps and capsys.readouterr().out == ""
    assert not [p for p in Path(collected).rglob(".run-*")]  # each run's own folder is removed


def test_hsmpi_pbt_collected_beside_hsmpi_replays_under_its_own_label(collected: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """hsmpi-pbt's final population kept beside hsmpi's: its defaults rule gives what hsmpi-pbt returns, to the
    bit, labelled hsmpi-pbt, and its rules' labels start with hsmpi-pbt/."""
    folder = str(tmp_path / "both")
    for f in Path(collected).rglob(f"seed{SEED}.h5"):  # hsmpi's cell, as collected
        target = Path(folder) / f.relative_to(collected)
        target.parent.mkdir(parents=True)
        target.write_bytes(f.read_bytes())
    assert replay.main(["collect", "--dir", folder, *BUDGET, "--seeds", "1", "--first-seed", str(SEED),
                        "--tasks", TASK, "--method", "hsmpi-pbt"]) == 0
    pbt = replay.load(replay.cell_path(folder, TASK, 4, 2, 1, SEED, "hsmpi-pbt"))
    outcome = methods.hsmpi_method(Problem(TASK, SEED, 4, 2, 1), SerialComm(),
                                   hsmpi_defaults(**replay.COLLECTED["hsmpi-pbt"]))
    assert pbt.method == "hsmpi-pbt" and pbt.returned == outcome.test
    path = str(tmp_path / "r.csv")
    assert replay.main(["rules", "--dir", folder, *BUDGET, "--csv", path, "--rules", "defaults", "bags-20-oob"]) == 0
    cells = compare.read_cells([path])
    assert set(cells) == {(TASK, label) for label in ("hsmpi", "hsmpi/bags-20-oob", "hsmpi-pbt",
                                                      "hsmpi-pbt/bags-20-oob")}
    assert cells[(TASK, "hsmpi-pbt")][SEED]["test"] == outcome.test
    assert cells[(TASK, "hsmpi")][SEED]["test"] == replay.load(replay.cell_path(collected, TASK, 4, 2, 1,
                                                                                 SEED)).returned


def test_beside_keeps_the_stored_cells_of_what_the_replay_does_not_write(collected: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--beside: a stored file's cells go into the replay's file for every task and method the replay does not
    write; where it does (a default changed), the replayed cells take their place; --seeds applies to both."""
    stored = tmp_path / "stored.csv"
    stored.write_text("task,method,seed,test_loss,seconds\n"
                      f"{TASK},hsmpi,{SEED},0.5,1.0\n{TASK},random,{SEED},0.25,2.0\n{TASK},random,9,0.75,2.0\n"
                      f"breast-cancer,hsmpi,{SEED},0.125,3.0\n")
    path = str(tmp_path / "r.csv")
    assert replay.main(["rules", "--dir", collected, *BUDGET, "--csv", path, "--seeds", "0-5",
                        "--beside", str(stored)]) == 0
    assert "3 cells from 2 collected runs, beside 2 stored tasks and methods" in capsys.readouterr().out
    cells = compare.read_cells([path])
    returned = replay.load(replay.cell_path(collected, TASK, 4, 2, 1, SEED)).returned
    assert set(cells[(TASK, "hsmpi")]) == {SEED} and cells[(TASK, "hsmpi")][SEED]["test"] == returned
    assert cells[(TASK, "random")] == {SEED: {"test": 0.25, "seconds": 2.0}}  # seed 9 is outside 0-5
    assert cells[("breast-cancer", "hsmpi")] == {SEED: {"test": 0.125, "seconds": 3.0}}  # not replayed: kept
    assert replay.main(["rules", "--dir", collected, *BUDGET, "--csv", path, "--beside",
                        str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.count("benchmarks.quality.replay: ") == 1


def test_no_collected_cells_at_that_budget_is_a_clear_error(collected: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main(["rules", "--dir", collected, "-S", "5", "--csv", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: no collected cells for S=5, M=30, m=6") == 1
    assert replay.main(["rules", "--dir", collected, *BUDGET, "--seeds", "4-9", "--csv", str(tmp_path / "r.csv")]) == 0
    assert "0 cells from 2 collected runs" in capsys.readouterr().out  # seed 3 left out
    with pytest.raises(SystemExit):
        replay.main(["rules", "--dir", collected, "--seeds", "9-4", "--csv", str(tmp_path / "r.csv")])
    assert "the range '9-4' is empty" in capsys.readouterr().err
    for bad, message in ((["rules", "--dir", collected, "--csv", "r.csv", "--jobs", "0"], "need --jobs 1 or more"),
                         (["collect", "--dir", collected, "-M", "2", "-m", "3", "--tasks", TASK], "1 <= -m <= -M"),
                         (["collect", "--dir", collected, "--seeds", "0", "--tasks", TASK], "need --seeds 1")):
        with pytest.raises(SystemExit):
            replay.main(bad)
        assert capsys.readouterr().err.count(message) == 1


def test_a_blend_gives_each_ensemble_half_the_weight() -> None:
    assert replay._blend({0: 2, 1: 1}, {1: 4}) == pytest.approx({0: 1 / 3, 1: 1 / 6 + 1 / 2})


def test_every_rule_gives_a_finite_loss_and_the_blends_ends_are_their_parts(collected: str) -> None:
    """Each rule on the collected cell; the blend with the average at share 0 is the greedy ensemble's loss
    and at share 1 the average's; the cross-validated share is one of the blends on its grid."""
    pop = replay.load(replay.cell_path(collected, TASK, 4, 2, 1, SEED))
    losses = {name: rule(pop) for name, (_, rule) in replay.RULES.items()}
    assert all(math.isfinite(v) for v in losses.values()), losses
    greedy, everyone = replay._ensemble(pop, replay.ONE)[0], {i: 1 for i in replay._candidates(pop)}
    assert replay._weighted(pop, replay._blend(greedy, everyone, share=0.0)) == pytest.approx(losses["one-selection"])
    assert replay._weighted(pop, replay._blend(greedy, everyone, share=1.0)) == pytest.approx(losses["average"])
    blends = [replay._weighted(pop, replay._blend(greedy, everyone, share=s)) for s in replay.SHARES]
    assert losses["cv-share"] in blends and losses["blend-average"] == blends[2]


@pytest.mark.filterwarnings("ignore:Exact p-value calculation")  # seeds where a rule returns the same ensemble
def test_the_docs_tables_of_replayed_rules_are_the_cells_in_docs_data() -> None:
    """docs/benchmarks.md, "Return rules replayed on stored populations": each cell of its three tables is what
    docs/data's replay files give (the rule's median, the seeds where it is better / worse than the defaults,
    p); and the replay's cells equal the benchmark's stored ones wherever both hold a cell, to the bit."""
    import statistics

    from scipy.stats import wilcoxon

    from benchmarks.quality import tables

    root = Path(__file__).resolve().parent.parent
    data, text = root / "docs" / "data", (root / "docs" / "benchmarks.md").read_text()
    start = text.index("## Return rules replayed on stored populations")
    section = text[start:text.index("\n## ", start + 1)]  # up to the next section
    cells = {budget: compare.read_cells([str(data / f"replay-{budget}-2026-12-07.csv")])
             for budget in ("32x60", "16x30")}
    stored = {"32x60": ["greedy-oob-32x60-seeds-0-79-2026-12-07.csv", "greedy-bags-32x60-seeds-0-79-2026-12-07.csv",
                        "moons-schedule-32x60-variants-seeds-0-79-2026-12-07.csv"],
              "16x30": ["greedy-oob-16x30-seeds-0-79-2026-12-07.csv", "greedy-bags-16x30-seeds-0-79-2026-12-07.csv"]}
    for budget, names in stored.items():  # a cell that differed between the files would be an error
        both = compare.read_cells([str(data / f"replay-{budget}-2026-12-07.csv")] + [str(data / n) for n in names])
        assert len(both[("digits", "hsmpi/bags-20-oob")]) == 120 and len(both[("digits", "hsmpi")]) == 120

    def cell(by: dict[Any, dict[int, dict[str, Any]]], task: str, rule: str, seeds: range) -> str:
        if (task, f"hsmpi/{rule}") not in by or not all(s in by[(task, f"hsmpi/{rule}")] for s in seeds):
            return "-"
        base = [by[(task, "hsmpi")][s]["test"] for s in seeds]
        new = [by[(task, f"hsmpi/{rule}")][s]["test"] for s in seeds]
        better, worse = sum(y < x for x, y in zip(base, new)), sum(y > x for x, y in zip(base, new))
        p = wilcoxon(new, base).pvalue if better + worse else math.nan
        return f"{statistics.median(new):.4g} ({better}/{worse}, {tables.format_p(p)})"

    blocks = [b for b in section.split("\n\n") if b.startswith("| ")]
    assert len(blocks) == 4
    rows = [[c.strip() for c in r.strip("|").split("|")] for b in blocks for r in b.splitlines()[2:]]
    tasks = ["digits", "moons-schedule", "sparse-regression", "friedman1", "regression1d"]
    checked = 0
    for budget, block in zip(("32x60", "16x30"), blocks[:2]):
        assert block.splitlines()[0] == "| rule | " + " | ".join(tasks) + " |"
        for row in [[c.strip() for c in r.strip("|").split("|")] for r in block.splitlines()[2:]]:
            for task, written in zip(tasks, row[1:]):
                if row[0].startswith("defaults"):
                    expected = f"{statistics.median(cells[budget][(task, 'hsmpi')][s]['test'] for s in range(80)):.4g}"
                else:
                    expected = cell(cells[budget], task, row[0], range(80))
                assert written == expected, (budget, row[0], task)
                checked += 1
    fresh = ["bags-20-oob", "blend-oob", "blend-average", "blend-oob-average"]
    for row in [[c.strip() for c in r.strip("|").split("|")] for r in blocks[2].splitlines()[2:]]:
        task, budget = row[0].split(", ")
        by = cells[budget.replace(" x ", "x")]
        assert row[1] == f"{statistics.median(by[(task, 'hsmpi')][s]['test'] for s in range(80, 120)):.4g}"
        assert row[2:] == [cell(by, task, rule, range(80, 120)) for rule in fresh], row[0]
        checked += 1
    between = {budget: compare.read_cells([str(data / f"replay-{budget}-seeds-0-39-2026-12-07.csv")])
               for budget in ("32x30", "16x60")}
    for budget in between:  # the replayed defaults are the stored benchmark's cells
        compare.read_cells([str(data / f"replay-{budget}-seeds-0-39-2026-12-07.csv"),
                            str(data / f"greedy-bags-{budget}-seeds-0-39-2026-12-07.csv")])
    for row in [[c.strip() for c in r.strip("|").split("|")] for r in blocks[3].splitlines()[2:]]:
        task, budget = row[0].split(", ")
        by = between[budget.replace(" x ", "x")]
        assert row[1] == f"{statistics.median(by[(task, 'hsmpi')][s]['test'] for s in range(40)):.4g}"
        assert row[2:] == [cell(by, task, rule, range(40)) for rule in ("bags-20-oob", "blend-oob")], row[0]
        checked += 1
    assert checked == 2 * 10 * 5 + 10 + 10 and len(rows) == 40


@pytest.mark.filterwarnings("ignore:Exact p-value calculation")
def test_the_docs_table_of_the_greedy_defaults_evidence_is_the_replay_cells_in_docs_data() -> None:
    """docs/benchmarks.md, "Defaults from the evidence: the greedy ensemble's weights": each cell of its
    evidence table (the seeds where blend-oob is better / worse than one selection, and p) is what docs/data's
    replay files give."""
    from scipy.stats import wilcoxon

    from benchmarks.quality import tables

    root = Path(__file__).resolve().parent.parent
    data, text = root / "docs" / "data", (root / "docs" / "benchmarks.md").read_text()
    start = text.index("## Defaults from the evidence: the greedy ensemble's weights")
    section = text[start:text.index("\n## ", start + 1)]
    block = next(b for b in section.split("\n\n") if b.startswith("| budget, seeds"))
    files = {"32 x 60": "replay-32x60-2026-12-07.csv", "16 x 30": "replay-16x30-2026-12-07.csv",
             "32 x 30": "replay-32x30-seeds-0-39-2026-12-07.csv", "16 x 60": "replay-16x60-seeds-0-39-2026-12-07.csv"}
    tasks = ["digits", "moons-schedule", "sparse-regression", "friedman1", "regression1d"]
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in block.splitlines()[2:]]
    for row in rows:
        budget, seeds_text = row[0].split(", ")
        first, last = seeds_text.removeprefix("fresh ").split("-")
        cells = compare.read_cells([str(data / files[budget])])
        for task, written in zip(tasks, row[1:]):
            old = [cells[(task, "hsmpi")][s]["test"] for s in range(int(first), int(last) + 1)]
            new = [cells[(task, "hsmpi/blend-oob")][s]["test"] for s in range(int(first), int(last) + 1)]
            better, worse = sum(y < x for x, y in zip(old, new)), sum(y > x for x, y in zip(old, new))
            assert written == f"{better}/{worse}, {tables.format_p(wilcoxon(new, old).pvalue)}", (row[0], task)
    assert len(rows) == 6
