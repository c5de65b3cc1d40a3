"""Neighbourhood samplers: new hyperparameters near a winner's.

Each sampler is a small object with one pure method,
`neighbour(space, hp, rng) -> hp`: no global random state, no MPI.  Rank 0
calls it with the random stream of the member that receives the new values,
so draws never depend on how members are laid out over ranks.  `TPE` also
holds what the search has seen so far (`observed`), which rank 0 binds to it
before each session's draws (hsmpi.algorithm.plan.sampler_for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsmpi.algorithm.space import Choice, HParams, IntUniform, Param, Space, Value


class SamplerError(ValueError):
    """A sampler name or option that does not validate."""


@dataclass(frozen=True)
class URS:
    """The paper's uniform random sampling in a box around the winner.

    The box has half-width `radius` in each parameter's normalised [0, 1]
    coordinates (so log-scaled parameters move by factors, not by amounts) and
    is cut at the bounds rather than clipped, so no probability piles up on a
    bound.  Unordered choices keep the winner's value, or with probability
    `radius` are drawn afresh.

    With `explore` > 0, each parameter is instead drawn afresh from its whole
    range with that probability (PBT's resample step), so a population whose
    winners all sit in one corner still tries values far from it.  At 0 no
    extra random number is drawn: the draws are those of the plain box.
    """

    radius: float = 0.15
    explore: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.radius, bool) or not (isinstance(self.radius, (int, float)) and 0.0 < self.radius <= 1.0):
            raise SamplerError(f"urs: radius must be in (0, 1], but got {self.radius!r}")
        _check_probability("urs: explore", self.explore)

    def _one(self, param: Param, value: Value, rng: np.random.Generator) -> Value:
        if self.explore > 0.0 and rng.random() < self.explore:
            return param.sample(rng)
        if isinstance(param, Choice) and not param.ordered:
            return param.sample(rng) if rng.random() < self.radius else value
        u = param.encode(value)
        low, high = max(0.0, u - self.radius), min(1.0, u + self.radius)
        return param.decode(float(rng.uniform(low, high)))

    def neighbour(self, space: Space, hp: Mapping[str, Value], rng: np.random.Generator) -> HParams:
        return {name: self._one(param, hp[name], rng) for name, param in space.items()}

    def describe(self) -> dict[str, Any]:
        return {"name": "urs", "radius": self.radius, **({"explore": self.explore} if self.explore else {})}


def _check_probability(what: str, p: object) -> None:
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise SamplerError(f"{what} must be in [0, 1], but got {p!r}")


@dataclass(frozen=True)
class Perturb:
    """PBT's explore step: multiply by 0.8 or 1.2 (clipped to the space), or resample.

    Integers move by at least one step; choices move to the adjacent value in
    the direction of the factor.
    """

    resample_probability: float = 0.25
    factors: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        _check_probability("perturb: resample_probability", self.resample_probability)
        if len(self.factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 for f in self.factors):
            raise SamplerError(f"perturb: factors must be two positive numbers, but got {self.factors!r}")

    def _one(self, param: Param, value: Value, rng: np.random.Generator) -> Value:
        if rng.random() < self.resample_probability:
            return param.sample(rng)
        up = bool(rng.integers(2))
        factor = self.factors[1] if up else self.factors[0]
        if isinstance(param, Choice):
            i = param.index(value) + (1 if up else -1)
            return param.values[min(max(i, 0), len(param.values) - 1)]
        if isinstance(param, IntUniform):
            moved = int(round(float(value) * factor))
            if moved == value:
                moved = int(value) + (1 if up else -1)
            return min(max(moved, param.low), param.high)
        return float(np.clip(float(value) * factor, param.low, param.high))

    def neighbour(self, space: Space, hp: Mapping[str, Value], rng: np.random.Generator) -> HParams:
        return {name: self._one(param, hp[name], rng) for name, param in space.items()}

    def describe(self) -> dict[str, Any]:
        return {"name": "perturb", "resample_probability": self.resample_probability, "factors": list(self.factors)}


GOOD_FRACTION = 0.25  # TPE: the best quarter of each session's members are the "good" observations
MIN_GOOD = 2  # TPE: below this many good observations the box's first draw is taken, as by URS


@dataclass(frozen=True)
class Observation:
    """One member's values in one session, and whether it was among that session's best (`good`)."""

    hparams: Mapping[str, Value]
    good: bool


@dataclass(frozen=True)
class TPE:
    """URS's box around the donor, with a model of the search's history choosing within it.

    Of `candidates` draws in the box, the one with the highest ratio l(x)/g(x)
    is taken, where l and g are Parzen densities (one per parameter, as in
    Hyperopt's TPE) of the values that were among the best `GOOD_FRACTION`
    of their session and of the rest.  How far each member's score fell
    during its session, ranked within the session, labels the history (PB2
    models the improvement likewise): a member that kept a winner's weights
    ends low whatever its values did, and scores fall from session to
    session as the weights train.
    The box keeps the paper's locality (the donor's weights were trained with
    values near its own); the model says where in it earlier sessions did
    well.  Without enough history it is URS (the first draw).
    """

    radius: float = 0.15
    candidates: int = 16
    observed: tuple[Observation, ...] = ()
    explore: float = 0.0

    def __post_init__(self) -> None:
        try:
            URS(radius=self.radius, explore=self.explore)  # URS's checks, in tpe's name
        except SamplerError as err:
            raise SamplerError(f"tpe: {str(err).split(': ', 1)[1]}") from None
        c = self.candidates
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise SamplerError(f"tpe: candidates must be an integer of at least 1, but got {c!r}")

    def with_history(self, observed: Sequence[Observation], radius: float | None = None) -> TPE:
        return TPE(self.radius if radius is None else radius, self.candidates, tuple(observed), self.explore)

    def neighbour(self, space: Space, hp: Mapping[str, Value], rng: np.random.Generator) -> HParams:
        box = URS(radius=self.radius, explore=self.explore)
        draws = [box.neighbour(space, hp, rng) for _ in range(self.candidates)]
        good = [o.hparams for o in self.observed if o.good]
        bad = [o.hparams for o in self.observed if not o.good]
        if len(good) < MIN_GOOD or not bad or len(draws) == 1:
            return draws[0]
        ratio = np.zeros(len(draws))
        for name, param in space.items():
            ratio += np.log(_parzen(param, [d[name] for d in draws], [h[name] for h in good]))
            ratio -= np.log(_parzen(param, [d[name] for d in draws], [h[name] for h in bad]))
        return draws[int(np.argmax(ratio))]  # the first of equals

    def describe(self) -> dict[str, Any]:
        return {"name": "tpe", "radius": self.radius, "candidates": self.candidates,
                **({"explore": self.explore} if self.explore else {})}


def observations(hparams: Sequence[Sequence[Mapping[str, Value]]], scores: Sequence[np.ndarray],
                 starts: Sequence[np.ndarray] | None = None) -> list[Observation]:
    """Every member of every session as an Observation: good when among the best GOOD_FRACTION of the
    session's finite scores (at least one; ties keep the lower index in front); a diverged member never is.

    With `starts` (each member's score when the session began: its source's at the end of the one before),
    members are ranked by how much their score fell during the session, not by where it ended, as PB2 models
    the improvement: a member that kept a winner's weights ends low whatever its values did."""
    out = []
    for k, (row, score) in enumerate(zip(hparams, scores)):
        score = np.asarray(score, dtype=float)
        if starts is not None:
            start = np.asarray(starts[k], dtype=float)
            score = np.where(np.isfinite(start), score - start, np.inf)
        finite = np.isfinite(score)
        order = np.argsort(np.where(finite, score, np.inf), kind="stable")
        top = set(int(i) for i in order[:max(1, math.ceil(GOOD_FRACTION * int(finite.sum())))] if finite[i])
        out += [Observation(dict(hp), i in top) for i, hp in enumerate(row)]
    return out


def _parzen(param: Param, at: Sequence[Value], seen: Sequence[Value]) -> np.ndarray:
    """A density of `seen` at each of `at`, with a uniform prior worth one observation so that no value's is
    zero: Gaussian kernels in the normalised coordinates (Scott's bandwidth, at least 0.05) for ordered
    parameters, smoothed counts for unordered choices."""
    if isinstance(param, Choice) and not param.ordered:
        k = len(param.values)
        counts = np.bincount([param.index(v) for v in seen], minlength=k)
        return np.array([(counts[param.index(v)] + 1.0 / k) / (len(seen) + 1.0) for v in at])
    x = np.array([param.encode(v) for v in at])
    mu = np.array([param.encode(v) for v in seen])
    bandwidth = max(0.05, 1.06 * float(np.std(mu)) * len(mu) ** -0.2)
    kernels = np.exp(-0.5 * ((x[:, None] - mu[None, :]) / bandwidth) ** 2) / (bandwidth * math.sqrt(2 * math.pi))
    return (kernels.sum(axis=1) + 1.0) / (len(mu) + 1.0)


Sampler = URS | Perturb | TPE

SAMPLERS = {"urs": URS, "perturb": Perturb, "tpe": TPE}


def make_sampler(name: str, radius: float = 0.15, resample_probability: float = 0.25,
                 candidates: int = 16, explore: float = 0.0) -> Sampler:
    """Build a sampler from its command-line name."""
    if name == "urs":
        return URS(radius=radius, explore=explore)
    if name == "perturb":
        return Perturb(resample_probability=resample_probability)
    if name == "tpe":
        return TPE(radius=radius, candidates=candidates, explore=explore)
    raise SamplerError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
