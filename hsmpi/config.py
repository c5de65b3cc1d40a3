"""The run's settings: keyword-only dataclasses in groups, each field described once, checked when built.

`Config` is all the groups at once (it inherits from each), so it stays one
flat, frozen, keyword-only dataclass: `Config(epochs=12)`, `config.epochs`,
and `to_dict()` flat as results files and checkpoints store it.  Every field
carries its one-line doc, its flag spelling, and where the default is None or
computed, what that default means (`dataclasses.field(metadata=...)`, read
through `options()`).  The command line, the TOML reader, `--help` and the
README's option table are all generated from that (hsmpi.cli.options), so no
default or list of choices is written twice.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from hsmpi.algorithm.sampling import make_sampler
from hsmpi.algorithm.selection import make_selection


class ConfigError(ValueError):
    """A setting a user gave that cannot work; the message says what was expected."""


# The choices, as types.  The sampler and selection names must equal their registries,
# hsmpi.algorithm.sampling.SAMPLERS (sorted, as its error messages list them) and
# hsmpi.algorithm.selection.SELECTIONS (in its order); tests/test_config.py checks both.
SamplerName = Literal["perturb", "tpe", "urs"]
SelectName = Literal["winner", "truncation"]
DeviceName = Literal["auto", "cpu", "cuda"]
VectorizeMode = Literal["auto", "on", "off"]
DirectionName = Literal["minimize", "maximize"]
ReturnsName = Literal["member", "average", "greedy", "auto"]
RETURNED = {"member": "best member", "average": "population average", "greedy": "greedy ensemble"}  # in words
TieBreakName = Literal["index", "loss"]
GreedyStopName = Literal["in-bag", "out-of-bag"]

DEVICES: tuple[str, ...] = get_args(DeviceName)
VECTORIZE: tuple[str, ...] = get_args(VectorizeMode)


def _field(default: Any, doc: str, *, short: str | None = None, metavar: str | None = None,
           means: str | None = None, minimum: int | None = None, expected: str | None = None,
           valid: Callable[[Any], bool] | None = None) -> Any:
    """A dataclass field with what the command line and the docs say about it.

    `doc`: one line (`code` in backticks: the README keeps them, --help drops
    them); `short`: a one-letter flag besides `--name-with-dashes`; `means`:
    what a None or computed default stands for; `minimum`: for integers;
    `valid`/`expected`: a check for a value no generic rule covers and the
    words "must be ..." uses when it fails.
    """
    return dataclasses.field(default=default, metadata={
        "doc": doc, "short": short, "metavar": metavar, "means": means, "minimum": minimum,
        "expected": expected, "valid": valid})


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value < 1.0


def _probability(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


def _growth(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 1.0 <= value <= 4.0


def _open_fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 < value < 1.0


def _prune_fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 < value <= 0.5


def _interval(value: Any) -> bool:
    if value == "auto":
        return True
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < math.inf


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, but got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, but got {value}")


class _Group:
    """A group of settings (a frozen keyword-only dataclass); Config inherits from every group."""

    def __post_init__(self) -> None:
        """Check the fields this group itself declares (each group says which it is; Config calls them all)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class TaskSettings(_Group):
    """What to train."""

    task: str = _field(
        "regression1d",
        "a built-in task (`regression1d`, `friedman1`, `diabetes`, `digits`, `digits-cnn`, `sparse-regression`, "
        "`breast-cancer`, `moons-schedule`), `package.module:Class` or `path/to/file.py:Class`",
        metavar="TASK", expected="a name or module:Class", valid=_nonempty_str)

    def __post_init__(self) -> None:
        _check_fields(self, TaskSettings)


@dataclass(frozen=True, kw_only=True)
class Search(_Group):
    """The search itself: population, schedule, sampling, selection and what is returned."""

    population: int | None = _field(
        None, "members S", short="-S", metavar="S",
        means="ranks x members-per-rank if that is given, else max(8, ranks)", minimum=1)
    epochs: int = _field(30, "epochs in all, M", short="-M", metavar="M", minimum=1)
    sessions: int = _field(
        6, "sessions m <= M; session k gets M/m epochs, rounded so they add up to M",
        short="-m", metavar="m", minimum=1)
    session_growth: float = _field(
        1.0, "each session G times as long as the one before (rounded, at least one epoch each, adding up to M): "
        "early selections come after few epochs, later ones after many; `1`: equal sessions, as in the paper",
        metavar="G", expected="a number in [1, 4]", valid=_growth)
    seed: int = _field(0, "run seed: data split, initial weights, every random stream", minimum=0)
    sampler: SamplerName = _field(
        "urs", "`urs` (the paper's box around the winner), `tpe` (of `--candidates` draws in that box, the one a "
        "Parzen model of the history's best and worst favours) or `perturb` (PBT's x0.8 / x1.2 or resample)")
    radius: float = _field(
        0.3, "`urs`, `tpe`: half-width of the box in normalised coordinates (the paper used 0.15; 0.3 won the "
        "benchmark)", metavar="R")
    radius_final: float | None = _field(
        None, "`urs`, `tpe`: shrink the box geometrically from `--radius` (first draw) to this (last draw)",
        metavar="R", means="a fixed box")
    explore: float = _field(
        0.0, "`urs`, `tpe`: chance per parameter of a fresh draw from its whole range instead of the box "
        "(PBT's resample step)", metavar="P", expected="a probability in [0, 1]", valid=_probability)
    candidates: int = _field(16, "`tpe`: draws in the box per new set of values, of which the model picks one",
                             metavar="N", minimum=1)
    resample_probability: float = _field(
        0.25, "`perturb`: chance of a fresh draw per parameter (else x0.8 or x1.2)", metavar="P")
    select: SelectName = _field(
        "truncation",
        "`truncation` (the bottom fraction copies random members of the top fraction and takes hyperparameters "
        "near the donor's; chosen from the benchmark, docs/benchmarks.md) or `winner` (the paper: one winner, "
        "S-1 copies)")
    truncation_fraction: float = _field(0.25, "`truncation`: the fraction, at most 0.5", metavar="F")
    islands: int = _field(
        1, "sub-populations: member i lives on island i mod N, selection and copies stay within each island, "
        "and every `--migrate-every` sessions the best member of all replaces each other island's worst",
        metavar="N", minimum=1)
    migrate_every: int = _field(2, "`--islands`: sessions between migrations", metavar="K", minimum=1)
    prune_at: float | None = _field(
        None, "stop hopeless members early, Hyperband-style: at this fraction of each session's epochs (a rung), "
        "the worst `--prune-fraction` of the members (of each island) restart from the best one there, with "
        "values near its, and the session goes on (each rung is a step of its own in the history)", metavar="F",
        means="no rungs", expected="a fraction in (0, 1)", valid=_open_fraction)
    prune_fraction: float = _field(0.25, "`--prune-at`: the fraction of the members a rung restarts, at most 0.5",
                                   metavar="Q", expected="a fraction in (0, 0.5]", valid=_prune_fraction)
    plateau: float | None = _field(
        None, "a session that adapts: it ends early, after at least 2 epochs, once the best member's validation "
        "score improved by less than this fraction in an epoch; the epochs it saves are spread over the later "
        "sessions (each member is validated after every epoch)", metavar="F",
        means="sessions of fixed length", expected="a fraction in (0, 1)", valid=_open_fraction)
    elitism: bool = _field(
        False,
        "return the best member ever seen on validation (any session); `--no-elitism`: the last session's best "
        "(the benchmark found elitism's pick overfits the validation set)")
    holdout: float = _field(
        0.0,
        "with `--elitism`: hold back this fraction of the validation split to judge the returned model only "
        "(the sessions select on the rest)",
        metavar="F", expected="a fraction in [0, 1)", valid=_fraction)
    smooth: int = _field(
        1, "select on the mean of each member's validation scores after each of a session's last N epochs "
        "(all of them in a shorter session); `1`: the score after the session, as in the paper", metavar="N",
        minimum=1)
    returns: ReturnsName = _field(
        "auto",
        "what the run returns: `member` (the best member, as in the paper), `average` (the final population's "
        "averaged prediction; `Result.returned_model()` reads it from the results file), `greedy` (a weighted "
        "average of members chosen greedily on validation: ensemble selection, whose first pick is the best "
        "member) or `auto` (`greedy` when 128 or more validation samples judge it; on fewer, the average for "
        "a classifier, and for a regression when it scores better on validation than the best-member rule, "
        "cross-validated, by 5%; chosen from the benchmark, docs/benchmarks.md)")
    average_top: int | None = _field(
        None, "`average`/`greedy`/`auto`: average (or choose from) the final population's best K on validation "
        "only", metavar="K",
        means="every member with a finite validation score", minimum=1)
    greedy_bags: int = _field(
        20, "`greedy` (and `auto` where it returns it): select on N bootstrap resamples of the validation split "
        "and weigh each member by its picks summed over them (with `--greedy-whole`, half the weight); `1`: once, "
        "on the whole split, the default until 2026-12-07 (docs/benchmarks.md, \"Defaults from the evidence: "
        "the greedy ensemble's weights\")", metavar="N", minimum=1)
    greedy_stop: GreedyStopName = _field(
        "out-of-bag", "with `--greedy-bags` 2 or more: which rows choose how many picks each bag's selection "
        "keeps: `in-bag` (its own resample, as for one selection) or `out-of-bag` (the validation rows its "
        "resample left out, which its picks never saw)")
    greedy_whole: bool = _field(
        True, "with `--greedy-bags` 2 or more: half the ensemble's weight from one selection on the whole "
        "validation split, half from the bags' summed picks (each half's picks normalised: a member weighs its "
        "picks in one times the other's total, summed); `--no-greedy-whole`: the bags alone")
    independent_init: bool = _field(
        True,
        "each member its own initial weights, so the first session also chooses among starting points; "
        "`--no-independent-init`: all start from the same weights, as in the paper")
    objective: str | None = _field(
        None, "what selection, the winner and the returned model follow: `loss` or a name the task's "
        "`metrics` returns", metavar="NAME", means="the task's objective attribute, else loss",
        expected="a metric name or 'loss'", valid=_nonempty_str)
    direction: DirectionName | None = _field(
        None, "whether the objective is minimised or maximised",
        means="minimize for a loss the settings name, else the task's direction attribute, else minimize")
    tie_break: TieBreakName = _field(
        "index",
        "how members whose objective scores are equal are ranked, for the winner, selection and the returned "
        "model: `index` (the lower member index first, as MINLOC does) or `loss` (the lower validation loss "
        "first; a metric such as accuracy on a small split ties often); no effect when the objective is the loss")

    def __post_init__(self) -> None:
        _check_fields(self, Search)
        if self.sessions > self.epochs:
            raise ConfigError(f"sessions (-m) must not exceed epochs (-M), but got m={self.sessions} > M={self.epochs}")
        if self.plateau is not None and (self.smooth > 1 or self.prune_at is not None):
            raise ConfigError(f"plateau does not go together with {'smooth' if self.smooth > 1 else 'prune-at'}: "
                              "it validates after every epoch and ends each session where the scores settle; "
                              "give one of them")
        # The sampler and the selection rule check their own parameters; their messages name them.
        try:
            make_sampler(self.sampler, radius=self.radius, resample_probability=self.resample_probability,
                         candidates=self.candidates, explore=self.explore)
            make_selection(self.select, fraction=self.truncation_fraction)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.radius_final is not None:
            try:
                make_sampler("urs", radius=self.radius_final)
            except ValueError as err:
                raise ConfigError(f"radius-final: {str(err).split(': ', 1)[1]}") from None


@dataclass(frozen=True, kw_only=True)
class Training(_Group):
    """How each rank trains its members."""

    device: DeviceName = _field("auto", "`auto` (a GPU when the rank sees one, else the CPU), `cpu` or `cuda`")
    members_per_rank: int | None = _field(
        None, "K members per rank, trained one after the other; S must then be ranks x K", metavar="K",
        means="S spread over the ranks", minimum=1)
    vectorize: VectorizeMode = _field(
        "auto",
        "`on`: train a rank's members as one batched model (see docs/performance.md), saying once why not where "
        "they cannot be; `auto`: on CUDA the same without a word; on the CPU only MLPs, and only where every member "
        "could share one stack, so that the layout never changes a result; `off`: one member at a time")
    batch_size: int = _field(64, "training batch size when the space has no `batch_size`", metavar="N", minimum=1)
    workers: int = _field(
        0, "DataLoader worker processes per rank for a task whose data is not a TensorDataset (kept alive for "
        "the whole run); `0`: read in the rank's own process", metavar="N", minimum=0)
    # 0 stays the stored value for "shared out" so that results files and TOML files written before keep working.
    threads: int = _field(
        0, "torch threads per rank; `0`: the node's cores divided by the ranks on that node", metavar="N",
        minimum=0)

    def __post_init__(self) -> None:
        _check_fields(self, Training)


@dataclass(frozen=True, kw_only=True)
class Output(_Group):
    """Where the results go, checkpoints, and stopping and resuming."""

    out: str = _field("hsmpi-out", "output folder (created; checked for writing before training)", metavar="DIR",
                      expected="a folder path", valid=_nonempty_str)
    resume: str | None = _field(
        None,
        "`PATH` (a checkpoint file or a folder holding one) or `auto` (the `--out` folder's checkpoint if there "
        "is one, else a new run)",
        metavar="PATH|auto", means="a new run", expected="a checkpoint path or 'auto'", valid=_nonempty_str)
    keep_checkpoints: int = _field(
        1, "checkpoints kept besides the backup: the latest plus N-1 older ones (`checkpoint-sNNNN.h5`)",
        metavar="N", minimum=1)
    checkpoint_interval: float | Literal["auto"] = _field(
        "auto",
        "seconds between checkpoints; `0`: after every session; `auto`: once 50x what the last checkpoint took "
        "has passed, at least 1 s and at most 10 minutes apart (about 2% of the run's time), so sessions of "
        "seconds or more are all checkpointed. The last session and every stop always write one",
        metavar="SECONDS|auto", expected="'auto' or seconds >= 0", valid=_interval)
    checkpoint_async: bool = _field(
        True,
        "each rank writes its checkpoint shard from a background thread while the next session trains (each "
        "member trains on once the writer has taken its state; no copies); `--no-checkpoint-async`: every "
        "rank waits for its write")
    stop_after: int | None = _field(
        None, "stop after session K (with `--prune-at`: step K) with a checkpoint and exit status 75 (continue later "
        "with `--resume`)",
        metavar="K", means="run to the end", minimum=1)
    progress: bool = _field(
        False, "a live bar within each session (rank 0's member-epochs) when stderr is a terminal; quiet in "
        "batch logs")
    export_top: int = _field(
        3, "write `best.pt` and the final population's best K as PyTorch state dicts", metavar="K", minimum=0)

    def __post_init__(self) -> None:
        _check_fields(self, Output)

    def checkpoint_seconds(self) -> float | None:
        """--checkpoint-interval in seconds; None for auto."""
        return None if self.checkpoint_interval == "auto" else float(self.checkpoint_interval)


# The groups in the order their fields come (in Config, --help and the README's table), with their titles.
GROUPS: tuple[tuple[str, type[_Group]], ...] = (
    ("task", TaskSettings), ("search", Search), ("training", Training), ("output and run control", Output))


# A dataclass takes its bases' fields in reverse MRO order, so the groups are listed here last to first
# for Config's fields (and to_dict(), and so the results file) to come in the order of GROUPS.
@dataclass(frozen=True, kw_only=True)
class Config(Output, Training, Search, TaskSettings):
    """Everything that defines a run; stored whole (flat) in every results file."""

    def __post_init__(self) -> None:
        for _, group in GROUPS:
            group.__post_init__(self)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, flat (as results files and checkpoints store it)."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields' names in order (also the TOML keys, with `_`)."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class Option:
    """One Config field as the command line, TOML files and the docs see it."""

    name: str  # the field; also the TOML key (with `_` or `-`)
    group: str  # its group's title
    doc: str  # one line; `code` in backticks
    flags: tuple[str, ...]  # ("-S", "--population") or ("--seed",)
    label: str  # the name error messages use: "population (-S)", "members-per-rank"
    metavar: str | None
    default: Any
    means: str | None  # what a None or computed default stands for
    kind: Any  # the annotation without None: int, float, str, bool, a Literal, or a union
    optional: bool  # None is allowed
    choices: tuple[str, ...] | None  # the Literal's values
    minimum: int | None
    expected: str | None
    valid: Callable[[Any], bool] | None

    @property
    def default_text(self) -> str:
        """The default as --help and the README state it: the value, or what it means."""
        if self.means is not None:
            return self.means
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


def _without_none(hint: Any) -> tuple[Any, bool]:
    """(`hint` with None taken out of a union, whether None was there)."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = get_args(hint)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):
            return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return hint, False


_DESCRIBED: dict[type[_Group], tuple[Option, ...]] = {}  # worked out once per group: every Config() checks


def _group_options(group: type[_Group]) -> tuple[Option, ...]:
    """The fields `group` itself declares, described; get_type_hints resolves the string annotations."""
    if group in _DESCRIBED:
        return _DESCRIBED[group]
    title = next(t for t, g in GROUPS if g is group)
    hints = get_type_hints(group)
    described = []
    for f in dataclasses.fields(group):  # type: ignore[arg-type]  # every group is a dataclass
        kind, optional = _without_none(hints[f.name])
        meta = f.metadata
        long = "--" + f.name.replace("_", "-")
        flags = (meta["short"], long) if meta["short"] else (long,)
        label = long[2:] + (f" ({meta['short']})" if meta["short"] else "")
        choices = get_args(kind) if get_origin(kind) is Literal else None
        described.append(Option(
            name=f.name, group=title, doc=meta["doc"], flags=flags, label=label, metavar=meta["metavar"],
            default=f.default, means=meta["means"], kind=kind, optional=optional, choices=choices,
            minimum=meta["minimum"], expected=meta["expected"], valid=meta["valid"]))
    _DESCRIBED[group] = tuple(described)
    return _DESCRIBED[group]


def options() -> tuple[Option, ...]:
    """Every Config field described, in Config's field order."""
    return tuple(o for _, group in GROUPS for o in _group_options(group))


def _check_fields(settings: Any, group: type[_Group]) -> None:
    """The checks every field of a kind gets, from its type and metadata, in field order.

    Floats without a `valid` (radius, radius-final, resample-probability,
    truncation-fraction) are the sampler's and selection's to check.
    """
    for o in _group_options(group):
        value = getattr(settings, o.name)
        if value is None and o.optional:
            continue
        if o.choices is not None:
            if not isinstance(value, str) or value not in o.choices:
                raise ConfigError(f"{o.label} must be one of {list(o.choices)}, but got {value!r}")
        elif o.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{o.label} must be true or false, but got {value!r}")
        elif o.kind is int:
            _int(o.label, value, 0 if o.minimum is None else o.minimum)
        elif o.valid is not None and not o.valid(value):
            raise ConfigError(f"{o.label} must be {o.expected}, but got {value!r}")
