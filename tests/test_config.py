"""hsmpi.config: Config validates each field with a clear message."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import get_args, get_type_hints

import pytest

from hsmpi.algorithm.sampling import SAMPLERS
from hsmpi.algorithm.selection import SELECTIONS
from hsmpi.config import (
    DEVICES,
    GROUPS,
    VECTORIZE,
    Config,
    ConfigError,
    Output,
    Search,
    Training,
    options,
)
from hsmpi.tasks import BUILTIN

# The fields and defaults runs, results files, checkpoints and TOML files have always had.
DEFAULTS = dict(task="regression1d", population=None, epochs=30, sessions=6, session_growth=1.0, seed=0,
                sampler="urs", radius=0.3, radius_final=None, explore=0.0, candidates=16, resample_probability=0.25,
                select="truncation", truncation_fraction=0.25,
                holdout=0.0, elitism=False, out="hsmpi-out", device="auto", members_per_rank=None,
                independent_init=True,  # False until 2026-12-05 (docs/benchmarks.md, "Independent initial weights")
                batch_size=64, threads=0, resume=None, keep_checkpoints=1,
                checkpoint_interval="auto", stop_after=None, progress=False, export_top=3, vectorize="auto",
                objective=None, direction=None, workers=0,  # these three came with the task hooks
                checkpoint_async=True,  # and this one with sharded checkpoints
                returns="auto", average_top=None,  # and these with the returned average
                # these three with bagged ensemble selection, its steps judged out of bag and half the weight from
                # one selection on the whole split; 1, "in-bag" and False until 2026-12-07
                greedy_bags=20, greedy_stop="out-of-bag", greedy_whole=True,
                smooth=1,  # and this with smoothed selection
                islands=1, migrate_every=2,  # and these with sub-populations
                prune_at=None, prune_fraction=0.25,  # and these with rungs
                plateau=None,  # and this with sessions that end at a plateau
                tie_break="index")  # and this with ties broken by the loss


def test_defaults_are_valid() -> None:
    c = Config()
    assert c.population is None and c.members_per_rank is None
    assert c.sampler in SAMPLERS and c.select in SELECTIONS and c.device in DEVICES
    assert c.sessions <= c.epochs


def test_fields_and_defaults_are_unchanged() -> None:
    assert Config().to_dict() == DEFAULTS
    assert sorted(Config.field_names()) == sorted(DEFAULTS)
    assert Config(**DEFAULTS) == Config()  # a results file's settings, in the order they were stored before


def test_config_is_every_group_and_only_that() -> None:
    groups = [g for _, g in GROUPS]
    assert all(issubclass(Config, g) for g in groups)
    names = [f.name for g in groups for f in dataclasses.fields(g)]  # type: ignore[arg-type]
    assert names == Config.field_names()  # each field in one group, in GROUPS order


@pytest.mark.parametrize("group, options, message", [
    (Search, {"sessions": 7, "epochs": 6}, r"sessions \(-m\) must not exceed epochs \(-M\)"),
    (Search, {"radius": 2.0}, r"urs: radius must be in \(0, 1\]"),
    (Training, {"threads": -1}, r"threads must be at least 0, but got -1"),
    (Output, {"out": ""}, r"out must be a folder path, but got ''"),
])
def test_each_group_checks_its_own_fields(group: type, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        group(**options)
    group(**{k: v for k, v in DEFAULTS.items() if k in {f.name for f in dataclasses.fields(group)}})


def test_choices_are_the_registries() -> None:
    hints = get_type_hints(Config)
    assert get_args(hints["sampler"]) == tuple(sorted(SAMPLERS))
    assert get_args(hints["select"]) == tuple(SELECTIONS)
    assert get_args(hints["device"]) == DEVICES == ("auto", "cpu", "cuda")
    assert get_args(hints["vectorize"]) == VECTORIZE == ("auto", "on", "off")


def test_task_doc_names_the_builtin_tasks() -> None:
    doc = next(o.doc for o in options() if o.name == "task")
    assert re.findall(r"`([\w-]+)`", doc) == list(BUILTIN)


def test_every_field_is_described() -> None:
    for o in options():
        assert o.doc and "\n" not in o.doc, o.name
        assert o.flags[-1] == "--" + o.name.replace("_", "-")
        assert (o.default is None) <= (o.means is not None), f"{o.name}: say what None means"
        assert o.optional == (o.default is None), o.name


def test_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Config("regression1d")  # type: ignore[misc]
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3  # type: ignore[misc]


def test_to_dict_round_trips_and_is_json() -> None:
    c = Config(task="mypkg.mod:Task", population=16, epochs=12, sessions=4, seed=3, sampler="perturb",
               resample_probability=0.5, select="truncation", truncation_fraction=0.5, out="runs/a",
               device="cpu", members_per_rank=2, independent_init=True, batch_size=32, threads=2)
    d = c.to_dict()
    assert list(d) == Config.field_names()
    assert Config(**d) == c
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("options", [
    {"population": 1}, {"epochs": 1, "sessions": 1}, {"epochs": 5, "sessions": 5}, {"seed": 0}, {"seed": 2**40},
    {"sampler": "urs", "radius": 1.0}, {"sampler": "urs", "radius": 1e-6}, {"sampler": "perturb"},
    {"sampler": "perturb", "resample_probability": 0.0}, {"sampler": "perturb", "resample_probability": 1},
    {"select": "truncation", "truncation_fraction": 0.5}, {"device": "cpu"}, {"device": "cuda"},
    {"members_per_rank": 1}, {"batch_size": 1}, {"threads": 0}, {"threads": 8}, {"independent_init": True},
    {"task": "pkg.module:Task"},
])
def test_good_options(options: dict) -> None:
    c = Config(**options)
    for k, v in options.items():
        assert getattr(c, k) == v


BAD = [
    # (options, a regex the message must match)
    ({"population": 0}, r"population \(-S\) must be at least 1, but got 0"),
    ({"population": -4}, r"population \(-S\) must be at least 1, but got -4"),
    ({"population": 8.0}, r"population \(-S\) must be an integer, but got 8\.0"),
    ({"population": "8"}, r"population \(-S\) must be an integer, but got '8'"),
    ({"population": True}, r"population \(-S\) must be an integer, but got True"),
    ({"epochs": 0}, r"epochs \(-M\) must be at least 1, but got 0"),
    ({"epochs": 10.5}, r"epochs \(-M\) must be an integer, but got 10\.5"),
    ({"epochs": True}, r"epochs \(-M\) must be an integer, but got True"),
    ({"sessions": 0}, r"sessions \(-m\) must be at least 1, but got 0"),
    ({"sessions": None}, r"sessions \(-m\) must be an integer, but got None"),
    ({"sessions": 7, "epochs": 6}, r"sessions \(-m\) must not exceed epochs \(-M\), but got m=7 > M=6"),
    ({"sessions": 31}, r"must not exceed epochs.*m=31 > M=30"),
    ({"seed": -1}, r"seed must be at least 0, but got -1"),
    ({"seed": 1.0}, r"seed must be an integer, but got 1\.0"),
    ({"seed": False}, r"seed must be an integer, but got False"),
    ({"sampler": "URS"}, r"sampler must be one of \['perturb', 'tpe', 'urs'\], but got 'URS'"),
    ({"sampler": "pbt"}, r"sampler must be one of .*'pbt'"),
    ({"sampler": None}, r"sampler must be one of .*None"),
    ({"select": "tournament"}, r"select must be one of \['winner', 'truncation'\], but got 'tournament'"),
    ({"select": ""}, r"select must be one of .*''"),
    ({"tie_break": "metric"}, r"tie-break must be one of \['index', 'loss'\], but got 'metric'"),
    ({"radius": 0}, r"urs: radius must be in \(0, 1\], but got 0"),
    ({"radius": -0.1}, r"urs: radius must be in \(0, 1\], but got -0\.1"),
    ({"radius": 1.5}, r"urs: radius must be in \(0, 1\], but got 1\.5"),
    ({"radius": math.nan}, r"urs: radius must be in \(0, 1\], but got nan"),
    ({"radius": "0.1"}, r"urs: radius must be in \(0, 1\], but got '0\.1'"),
    ({"sampler": "perturb", "resample_probability": 1.5}, r"resample_probability must be in \[0, 1\], but got 1\.5"),
    ({"sampler": "perturb", "resample_probability": -0.5}, r"resample_probability must be in \[0, 1\]"),
    ({"select": "truncation", "truncation_fraction": 0.75}, r"fraction must be in \(0, 0\.5\], but got 0\.75"),
    ({"select": "truncation", "truncation_fraction": 0}, r"fraction must be in \(0, 0\.5\], but got 0"),
    ({"out": ""}, r"out must be a folder path, but got ''"),
    ({"out": None}, r"out must be a folder path, but got None"),
    ({"device": "gpu"}, r"device must be one of \['auto', 'cpu', 'cuda'\], but got 'gpu'"),
    ({"device": "CUDA"}, r"device must be one of .*'CUDA'"),
    ({"device": "cuda:0"}, r"device must be one of .*'cuda:0'"),
    ({"members_per_rank": 0}, r"members-per-rank must be at least 1, but got 0"),
    ({"members_per_rank": 2.0}, r"members-per-rank must be an integer, but got 2\.0"),
    ({"members_per_rank": True}, r"members-per-rank must be an integer, but got True"),
    ({"independent_init": 1}, r"independent-init must be true or false, but got 1"),
    ({"independent_init": "yes"}, r"independent-init must be true or false, but got 'yes'"),
    ({"batch_size": 0}, r"batch-size must be at least 1, but got 0"),
    ({"batch_size": True}, r"batch-size must be an integer, but got True"),
    ({"batch_size": 64.0}, r"batch-size must be an integer, but got 64\.0"),
    ({"threads": -1}, r"threads must be at least 0, but got -1"),
    ({"threads": 1.5}, r"threads must be an integer, but got 1\.5"),
    ({"task": ""}, r"task must be a name or module:Class, but got ''"),
    ({"task": None}, r"task must be a name or module:Class, but got None"),
    ({"radius_final": 1.5}, r"radius-final: radius must be in \(0, 1\], but got 1\.5"),
    ({"sampler": "tpe", "radius": 0}, r"tpe: radius must be in \(0, 1\], but got 0"),
    ({"candidates": 0}, r"candidates must be at least 1, but got 0"),
    ({"session_growth": 0.5}, r"session-growth must be a number in \[1, 4\], but got 0\.5"),
    ({"session_growth": 5}, r"session-growth must be a number in \[1, 4\], but got 5"),
    ({"session_growth": math.nan}, r"session-growth must be a number in \[1, 4\], but got nan"),
    ({"session_growth": True}, r"session-growth must be a number in \[1, 4\], but got True"),
    ({"candidates": 1.5}, r"candidates must be an integer, but got 1\.5"),
    ({"prune_at": 0}, r"prune-at must be a fraction in \(0, 1\), but got 0"),
    ({"prune_at": 1.0}, r"prune-at must be a fraction in \(0, 1\), but got 1\.0"),
    ({"prune_at": "half"}, r"prune-at must be a fraction in \(0, 1\), but got 'half'"),
    ({"prune_fraction": 0.75}, r"prune-fraction must be a fraction in \(0, 0\.5\], but got 0\.75"),
    ({"prune_fraction": 0}, r"prune-fraction must be a fraction in \(0, 0\.5\], but got 0"),
    ({"plateau": 0.0}, r"plateau must be a fraction in \(0, 1\), but got 0\.0"),
    ({"plateau": 1}, r"plateau must be a fraction in \(0, 1\), but got 1"),
    ({"plateau": 0.01, "smooth": 2}, r"plateau does not go together with smooth: .*give one of them"),
    ({"plateau": 0.01, "prune_at": 0.5}, r"plateau does not go together with prune-at"),
    ({"greedy_stop": "oob", "greedy_bags": 20}, r"greedy-stop must be one of \['in-bag', 'out-of-bag'\], "
                                                r"but got 'oob'"),
    ({"holdout": 1.0}, r"holdout must be a fraction in \[0, 1\), but got 1\.0"),
    ({"holdout": -0.1}, r"holdout must be a fraction in \[0, 1\), but got -0\.1"),
    ({"holdout": True}, r"holdout must be a fraction in \[0, 1\), but got True"),
    ({"elitism": "yes"}, r"elitism must be true or false, but got 'yes'"),
    ({"progress": 1}, r"progress must be true or false, but got 1"),
    ({"vectorize": "maybe"}, r"vectorize must be one of \['auto', 'on', 'off'\], but got 'maybe'"),
    ({"resume": ""}, r"resume must be a checkpoint path or 'auto', but got ''"),
    ({"keep_checkpoints": 0}, r"keep-checkpoints must be at least 1, but got 0"),
    ({"checkpoint_interval": -5.0}, r"checkpoint-interval must be 'auto' or seconds >= 0, but got -5\.0"),
    ({"checkpoint_interval": math.inf}, r"checkpoint-interval must be 'auto' or seconds >= 0, but got inf"),
    ({"checkpoint_interval": "soon"}, r"checkpoint-interval must be 'auto' or seconds >= 0, but got 'soon'"),
    ({"checkpoint_interval": True}, r"checkpoint-interval must be 'auto' or seconds >= 0, but got True"),
    ({"export_top": -1}, r"export-top must be at least 0, but got -1"),
    ({"stop_after": 0}, r"stop-after must be at least 1, but got 0"),
    ({"stop_after": 1.0}, r"stop-after must be an integer, but got 1\.0"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[re.sub(r"\W+", "-", repr(o)).strip("-") for o, _ in BAD])
def test_bad_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Config(**options)
    # A user error, not a traceback from deep inside: no chained cause, one line.
    assert err.value.__cause__ is None
    assert "\n" not in str(err.value)


def test_unhashable_sampler_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        Config(sampler=["urs"])  # type: ignore[arg-type]


def test_unhashable_select_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"select must be one of"):
        Config(select=["winner"])  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
