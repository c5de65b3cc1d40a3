"""The run's settings: one keyword-only dataclass, checked when built."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hsmpi.algorithm.sampling import SAMPLERS, make_sampler
from hsmpi.algorithm.selection import SELECTIONS, make_selection


class ConfigError(ValueError):
    """A setting a user gave that cannot work; the message says what was expected."""


DEVICES = ("auto", "cpu", "cuda")
VECTORIZE = ("auto", "on", "off")


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, but got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, but got {value}")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything that defines a run; stored whole in every results file."""

    task: str = "regression1d"
    population: int | None = None  # S; None: max(8, number of ranks x members per rank)
    epochs: int = 30  # M, in all
    sessions: int = 6  # m, each of about M/m epochs
    seed: int = 0
    sampler: str = "urs"
    radius: float = 0.3  # urs: half-width of the box in normalised coordinates (the paper: 0.15)
    radius_final: float | None = None  # urs: shrink the box geometrically to this half-width by the last draw
    resample_probability: float = 0.25  # perturb: chance of a fresh draw instead of x0.8/x1.2
    select: str = "truncation"  # chosen from the quality benchmark (docs/benchmarks.md); "winner" is the paper's
    truncation_fraction: float = 0.25
    holdout: float = 0.0  # fraction of the validation split held back to judge the returned model only
    elitism: bool = False  # True: return the best member ever seen on validation; False: the last session's best
    out: str = "hsmpi-out"
    device: str = "auto"
    members_per_rank: int | None = None  # K; None: spread S over the ranks
    independent_init: bool = False
    batch_size: int = 64  # used when the space has no batch_size
    threads: int = 0  # torch threads per rank; 0: the node's cores / ranks on the node
    resume: str | None = None  # a checkpoint file or folder, or "auto" (the out folder's, if any)
    keep_checkpoints: int = 1  # checkpoints kept besides the backup: the latest, plus N-1 older ones
    checkpoint_interval: float | str = "auto"  # seconds between checkpoints; 0: every session; auto: see checkpoint.due
    stop_after: int | None = None  # stop (checkpoint, exit 75) once this session number is done
    progress: bool = False  # a live bar within each session, on a terminal only
    export_top: int = 3  # best.pt plus the final population's best K as PyTorch state dicts
    vectorize: str = "auto"  # train a rank's members as one batched model: on, off, auto (on for CUDA)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a name or module:Class, but got {self.task!r}")
        if self.population is not None:
            _int("population (-S)", self.population, 1)
        _int("epochs (-M)", self.epochs, 1)
        _int("sessions (-m)", self.sessions, 1)
        if self.sessions > self.epochs:
            raise ConfigError(f"sessions (-m) must not exceed epochs (-M), but got m={self.sessions} > M={self.epochs}")
        _int("seed", self.seed, 0)
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {sorted(SAMPLERS)}, but got {self.sampler!r}")
        if not isinstance(self.select, str) or self.select not in SELECTIONS:
            raise ConfigError(f"select must be one of {list(SELECTIONS)}, but got {self.select!r}")
        try:
            make_sampler(self.sampler, radius=self.radius, resample_probability=self.resample_probability)
            make_selection(self.select, fraction=self.truncation_fraction)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"out must be a folder path, but got {self.out!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {list(DEVICES)}, but got {self.device!r}")
        if self.members_per_rank is not None:
            _int("members-per-rank", self.members_per_rank, 1)
        if self.radius_final is not None:
            try:
                make_sampler("urs", radius=self.radius_final)
            except ValueError as err:
                raise ConfigError(f"radius-final: {str(err).split(': ', 1)[1]}") from None
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout must be a fraction in [0, 1), but got {self.holdout!r}")
        if not isinstance(self.elitism, bool):
            raise ConfigError(f"elitism must be true or false, but got {self.elitism!r}")
        if not isinstance(self.independent_init, bool):
            raise ConfigError(f"independent-init must be true or false, but got {self.independent_init!r}")
        _int("batch-size", self.batch_size, 1)
        _int("threads", self.threads, 0)
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume):
            raise ConfigError(f"resume must be a checkpoint path or 'auto', but got {self.resume!r}")
        _int("keep-checkpoints", self.keep_checkpoints, 1)
        ci = self.checkpoint_interval
        if ci != "auto" and (isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 <= ci < math.inf):
            raise ConfigError(f"checkpoint-interval must be 'auto' or seconds >= 0, but got {ci!r}")
        _int("export-top", self.export_top, 0)
        if not isinstance(self.progress, bool):
            raise ConfigError(f"progress must be true or false, but got {self.progress!r}")
        if self.vectorize not in VECTORIZE:
            raise ConfigError(f"vectorize must be one of {list(VECTORIZE)}, but got {self.vectorize!r}")
        if self.stop_after is not None:
            _int("stop-after", self.stop_after, 1)

    def checkpoint_seconds(self) -> float | None:
        """--checkpoint-interval in seconds; None for auto."""
        return None if self.checkpoint_interval == "auto" else float(self.checkpoint_interval)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def session_epochs(epochs: int, sessions: int) -> list[int]:
    """Epochs per session: M split into m near-equal parts that add up to M."""
    bounds = [round(k * epochs / sessions) for k in range(sessions + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def layout(population: int, size: int) -> list[range]:
    """Members held by each rank: contiguous blocks whose sizes differ by at most one."""
    base, extra = divmod(population, size)
    blocks, start = [], 0
    for r in range(size):
        n = base + (1 if r < extra else 0)
        blocks.append(range(start, start + n))
        start += n
    return blocks


def resolve_population(config: Config, size: int) -> int:
    """S for this job, checked against the number of ranks."""
    k = config.members_per_rank
    if config.population is None:
        population = size * k if k is not None else max(8, size)
    else:
        population = config.population
        if k is not None and population != size * k:
            raise ConfigError(
                f"population (-S {population}) must equal ranks x members-per-rank ({size} x {k} = {size * k}); "
                "give one of them"
            )
    if size > population:
        raise ConfigError(f"more ranks ({size}) than members (-S {population}); use -S {size} or fewer ranks")
    return population
