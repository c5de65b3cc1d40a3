"""hsmpi.cli.options: the parser, TOML keys and README table come from Config's fields and state the real defaults.

In-process (no mpirun): tests/test_cli.py runs the command line itself.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hsmpi.cli import UsageError, interval_arg, parse
from hsmpi.cli.options import MARKERS, build_parser, help_text, main, markdown_table, read_toml, toml_field
from hsmpi.config import GROUPS, Config, options
from hsmpi.schedule import layout, resolve_population, session_epochs, with_rungs
from hsmpi.tasks import Objective, task_objective

from conftest import ROOT

FIELDS = Config.field_names()
NON_FIELD = {"help", "version", "config"}
DEFAULTS = Config()


def _actions() -> dict[str, argparse.Action]:
    actions = [a for a in build_parser()._actions]
    by_dest = {a.dest: a for a in actions}
    assert len(by_dest) == len(actions), "two flags write the same setting"
    return by_dest


def _stated_default(dest: str) -> str:
    """The "(default: X)" at the end of a flag's help, as --help prints it (argparse un-doubles %%)."""
    action = _actions()[dest]
    assert action.help is not None
    found = re.search(r"\(default: (.*)\)$", action.help.replace("%%", "%"))
    assert found, f"--help for {dest} states no default: {action.help!r}"
    return found.group(1)


# --- one flag and one doc line per field -----------------------------------------------------------------------


def test_every_field_has_exactly_one_flag_and_nothing_else_is_a_flag() -> None:
    dests = [a.dest for a in build_parser()._actions]
    assert sorted(dests) == sorted([*FIELDS, *NON_FIELD])


def test_every_field_has_a_doc_line() -> None:
    described = options()
    assert [o.name for o in described] == FIELDS
    for o in described:
        assert o.doc.strip() and "\n" not in o.doc, o.name
        assert o.doc == o.doc.strip() and not o.doc.endswith("."), o.name


@pytest.mark.parametrize("name", FIELDS)
def test_flag_spelling(name: str) -> None:
    short = {"population": "-S", "epochs": "-M", "sessions": "-m"}
    long = "--" + name.replace("_", "-")
    expected = [short[name], long] if name in short else [long]
    action = _actions()[name]
    if isinstance(action, argparse.BooleanOptionalAction):
        expected.append("--no-" + name.replace("_", "-"))
    assert action.option_strings == expected


def test_flags_default_to_suppress_so_only_given_flags_override_toml_and_checkpoints() -> None:
    assert vars(build_parser().parse_args([])) == {"help": False, "version": False, "config": None}


# --- the defaults --help states are the run's -----------------------------------------------------------------


# Fields whose default is None: what --help says it means, and a check that the run does that.
def _population_default() -> None:
    assert [resolve_population(Config(), n) for n in (1, 2, 8, 12)] == [8, 8, 8, 12]  # max(8, ranks)
    assert resolve_population(Config(members_per_rank=1), 2) == 2  # ranks x members-per-rank when given
    assert resolve_population(Config(members_per_rank=3), 4) == 12


def _members_per_rank_default() -> None:
    for population, ranks in [(8, 2), (8, 3), (12, 5)]:
        sizes = [len(b) for b in layout(resolve_population(Config(population=population), ranks), ranks)]
        assert sum(sizes) == population and max(sizes) - min(sizes) <= 1  # S spread over the ranks


def _objective_default() -> None:
    class Bare:
        pass

    class Judged:
        objective, direction = "accuracy", "maximize"

    assert task_objective(Bare()) == Objective("loss", "minimize")  # the task's attributes, else loss, minimised
    assert task_objective(Judged()) == Objective("accuracy", "maximize")
    assert task_objective(Judged(), "loss", "minimize") == Objective("loss", "minimize")  # the flags win
    assert task_objective(Judged(), "loss") == Objective("loss", "minimize")  # the loss is minimised
    assert task_objective(Judged(), "loss", "maximize") == Objective("loss", "maximize")  # unless told
    assert task_objective(Judged(), "f1") == Objective("f1", "maximize")  # another metric: the task's way


def _average_top_default() -> None:
    from hsmpi.engine.average import _averaged

    scores = np.array([0.3, np.inf, 0.1, np.nan, 0.2])
    assert _averaged(scores, None) == [0, 2, 4]  # every member with a finite validation score
    assert _averaged(scores, 2) == [2, 4]


def _prune_at_default() -> None:
    c = Config()
    assert with_rungs(session_epochs(c.epochs, c.sessions), c.prune_at) == ([5] * 6, [False] * 6)  # no rungs


# (radius-final, resume and stop-after: None is "not asked for"; the engine reads it as the text says.)
COMPUTED: dict[str, tuple[str, Any]] = {
    "objective": ("the task's objective attribute, else loss", _objective_default),
    "direction": ("minimize for a loss the settings name, else the task's direction attribute, else minimize",
                  _objective_default),
    "population": ("ranks x members-per-rank if that is given, else max(8, ranks)", _population_default),
    "members_per_rank": ("S spread over the ranks", _members_per_rank_default),
    "radius_final": ("a fixed box", None),
    "prune_at": ("no rungs", _prune_at_default),
    "plateau": ("sessions of fixed length", None),
    "average_top": ("every member with a finite validation score", _average_top_default),
    "resume": ("a new run", None),
    "stop_after": ("run to the end", None),
}


def _value(text: str, default: Any) -> Any:
    """The help's default text read back as a value of the default's type."""
    if isinstance(default, bool):
        return {"on": True, "off": False}[text]
    if isinstance(default, (int, float)):
        return type(default)(text)
    return text


@pytest.mark.parametrize("name", FIELDS)
def test_help_states_the_default_the_run_uses(name: str) -> None:
    stated = _stated_default(name)
    default = getattr(DEFAULTS, name)
    if default is None:
        assert name in COMPUTED, f"{name} defaults to None: say here what --help must say it means, and check it"
        meaning, check = COMPUTED[name]
        assert stated == meaning
        if check is not None:
            check()
    else:
        assert name not in COMPUTED
        assert _value(stated, default) == default, (stated, default)


def test_the_three_formerly_wrong_defaults() -> None:
    assert DEFAULTS.radius == 0.3 and _stated_default("radius") == "0.3"
    assert DEFAULTS.select == "truncation" and _stated_default("select") == "truncation"
    assert DEFAULTS.elitism is False and _stated_default("elitism") == "off"


def test_threads_0_is_said_and_means_the_nodes_cores_shared_by_its_ranks() -> None:
    import torch

    from hsmpi.engine.device import set_threads

    assert DEFAULTS.threads == 0
    assert _actions()["threads"].help == "torch threads per rank; 0: the node's cores divided by the ranks on that " \
                                         "node (default: 0)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    try:
        assert set_threads(0, 1) == cores
        assert set_threads(0, 2) == max(1, cores // 2)
        assert set_threads(3, 2) == 3
    finally:
        torch.set_num_threads(before)


def test_help_is_printable() -> None:
    text = build_parser().format_help()
    assert "about 2% of the run's time" in text  # a % in a doc reaches the help whole
    assert "`" not in text  # the README's code marks are not for a terminal
    for title, _ in GROUPS:
        assert f"\n{title}:\n" in text


# --- types and choices ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIELDS)
def test_choices_come_from_the_literal(name: str) -> None:
    o = next(o for o in options() if o.name == name)
    action = _actions()[name]
    assert (tuple(action.choices) if action.choices is not None else None) == o.choices


def test_booleans_take_yes_and_no_forms() -> None:
    p = build_parser()
    for name in ("elitism", "independent_init", "progress"):
        flag = "--" + name.replace("_", "-")
        assert vars(p.parse_args([flag]))[name] is True
        assert vars(p.parse_args(["--no-" + flag[2:]]))[name] is False


# Every flag as it was spelt before the parser was generated, and what it gave.
OLD_FLAGS = (["--task", "friedman1", "-S", "8", "-M", "12", "-m", "4", "--seed", "3", "--sampler", "perturb",
              "--radius", "0.2", "--radius-final", "0.05", "--resample-probability", "0.5", "--select", "winner",
              "--truncation-fraction", "0.3", "--elitism", "--holdout", "0.1", "--out", "runs/a", "--device", "cpu",
              "--members-per-rank", "2", "--independent-init", "--batch-size", "32", "--threads", "2",
              "--resume", "auto", "--keep-checkpoints", "2", "--checkpoint-interval", "5", "--progress",
              "--export-top", "1", "--vectorize", "on", "--stop-after", "3"])
OLD_VALUES = dict(task="friedman1", population=8, epochs=12, sessions=4, seed=3, sampler="perturb", radius=0.2,
                  radius_final=0.05, resample_probability=0.5, select="winner", truncation_fraction=0.3,
                  elitism=True, holdout=0.1, out="runs/a", device="cpu", members_per_rank=2, independent_init=True,
                  batch_size=32, threads=2, resume="auto", keep_checkpoints=2, checkpoint_interval=5.0,
                  progress=True, export_top=1, vectorize="on", stop_after=3)


NEW_FLAGS = ["--objective", "mae", "--direction", "maximize", "--workers", "2",  # added with the task hooks
             "--no-checkpoint-async",  # added with sharded checkpoints
             "--returns", "member", "--average-top", "4",  # added with the returned average
             "--smooth", "2",  # added with smoothed selection
             "--islands", "2", "--migrate-every", "3",  # added with sub-populations
             "--candidates", "8",  # added with the tpe sampler
             "--session-growth", "1.5",  # added with growing sessions
             "--prune-at", "0.5", "--prune-fraction", "0.125",  # added with rungs
             "--plateau", "0.02",  # added with sessions that end at a plateau (it refuses --smooth 2)
             "--tie-break", "loss",  # added with ties broken by the loss
             "--explore", "0.1",  # added with the box's fresh draws
             "--greedy-bags", "20",  # added with bagged ensemble selection
             "--greedy-stop", "out-of-bag",  # added with its steps judged out of bag
             "--greedy-whole"]  # added with half the weight from one selection on the whole split
NEW_VALUES = dict(objective="mae", direction="maximize", workers=2, checkpoint_async=False, returns="member",
                  average_top=4, smooth=2, islands=2, migrate_every=3, candidates=8,
                  session_growth=1.5, prune_at=0.5, prune_fraction=0.125, plateau=0.02, tie_break="loss",
                  explore=0.1, greedy_bags=20, greedy_stop="out-of-bag", greedy_whole=True)


def test_every_old_flag_still_parses_to_the_same_value() -> None:
    args = vars(build_parser().parse_args(OLD_FLAGS + NEW_FLAGS))
    assert {k: v for k, v in args.items() if k not in NON_FIELD} == {**OLD_VALUES, **NEW_VALUES}
    assert set(OLD_VALUES) | set(NEW_VALUES) == set(FIELDS)
    Config(**OLD_VALUES, **{k: v for k, v in NEW_VALUES.items() if k != "plateau"})
    Config(**OLD_VALUES, **{k: v for k, v in NEW_VALUES.items() if k not in ("smooth", "prune_at")})


@pytest.mark.parametrize("argv, needle", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-S", "many"], "argument -S/--population: invalid int value: 'many'"),
    (["--sampler", "grid"], "argument --sampler: invalid choice: 'grid'"),
    (["--checkpoint-interval", "soon"], "argument --checkpoint-interval: expected seconds or 'auto', got 'soon'"),
    (["--elitism=yes"], "ignored explicit argument 'yes'"),
])
def test_usage_errors_raise_instead_of_printing(argv: list[str], needle: str) -> None:
    with pytest.raises(UsageError, match=re.escape(needle)):
        build_parser().parse_args(argv)


def test_checkpoint_interval_is_read_by_interval_arg() -> None:
    assert _actions()["checkpoint_interval"].type is interval_arg
    assert interval_arg("auto") == "auto" and interval_arg("2.5") == 2.5
    assert vars(build_parser().parse_args(["--checkpoint-interval", "auto"]))["checkpoint_interval"] == "auto"


# --- TOML keys -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIELDS)
def test_toml_keys_and_flags_name_the_same_field(name: str) -> None:
    long = "--" + name.replace("_", "-")
    assert toml_field(name) == name and toml_field(long[2:]) == name
    assert _actions()[name].dest == name


def test_toml_keys_are_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('population = 6\nradius-final = 0.1\nradius_final = 0.2\ncheckpoint-interval = "auto"\n'
                    'stop_after = 2\n')
    assert read_toml(str(path)) == {"population": 6, "radius_final": 0.2, "checkpoint_interval": "auto",
                                    "stop_after": 2}
    for key in ("help", "config", "version", "S", "no_elitism", "popuation"):
        assert toml_field(key) is None, key


def test_unknown_toml_key_names_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("popuation = 4\n")
    with pytest.raises(UsageError) as err:
        read_toml(str(path))
    known = ", ".join(sorted(FIELDS))
    assert str(err.value) == f"config file {str(path)!r}: unknown option 'popuation'; known: {known}"


@pytest.mark.parametrize("text, needle", [("population = [4\n", "is not valid TOML"), (None, "does not exist")])
def test_unreadable_toml(text: str | None, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=needle):
        read_toml(str(path))


def test_parse_flags_over_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('sampler = "perturb"\nepochs = 8\nsessions = 2\nindependent-init = true\nelitism = true\n')
    config = parse(["--config", str(path), "-m", "4", "--no-elitism"])
    assert isinstance(config, Config)
    assert (config.sampler, config.epochs, config.sessions, config.independent_init, config.elitism) == \
        ("perturb", 8, 4, True, False)
    assert parse(["--help"]) == "help" and parse(["--version"]) == "version"


# --- the README's table --------------------------------------------------------------------------------------------


def test_readme_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    assert text[start:end].strip() == markdown_table(), \
        "README.md's option table is out of date: put in the output of python -m hsmpi.cli.options --markdown"


def test_table_has_a_row_per_field_with_the_help_default() -> None:
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(FIELDS) + 1 and rows[-1].startswith("| `--config` |")
    for o, row in zip(options(), rows):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[0].split(", ")[-1 if o.kind is not bool else -2] == f"`--{o.name.replace('_', '-')}`"
        assert cells[1] == o.doc
        assert cells[2].strip("`") == _stated_default(o.name)
        assert f"(default: {o.default_text.replace('`', '')})" in help_text(o)


def test_markdown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table() + "\n"


def test_markdown_command_as_a_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "hsmpi.cli.options", "--markdown"], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == markdown_table() + "\n"
    assert result.stderr == ""  # no runpy warning: the package does not import the module it runs
