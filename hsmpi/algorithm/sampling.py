"""Neighbourhood samplers: new hyperparameters near a winner's.

Each sampler is a small object with one pure method,
`neighbour(space, hp, rng) -> hp`: no global random state, no MPI.  Rank 0
calls it with the random stream of the member that receives the new values,
so draws never depend on how members are laid out over ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    """

    radius: float = 0.15

    def __post_init__(self) -> None:
        if isinstance(self.radius, bool) or not (isinstance(self.radius, (int, float)) and 0.0 < self.radius <= 1.0):
            raise SamplerError(f"urs: radius must be in (0, 1], but got {self.radius!r}")

    def _one(self, param: Param, value: Value, rng: np.random.Generator) -> Value:
        if isinstance(param, Choice) and not param.ordered:
            return param.sample(rng) if rng.random() < self.radius else value
        u = param.encode(value)
        low, high = max(0.0, u - self.radius), min(1.0, u + self.radius)
        return param.decode(float(rng.uniform(low, high)))

    def neighbour(self, space: Space, hp: Mapping[str, Value], rng: np.random.Generator) -> HParams:
        return {name: self._one(param, hp[name], rng) for name, param in space.items()}

    def describe(self) -> dict[str, Any]:
        return {"name": "urs", "radius": self.radius}


@dataclass(frozen=True)
class Perturb:
    """PBT's explore step: multiply by 0.8 or 1.2 (clipped to the space), or resample.

    Integers move by at least one step; choices move to the adjacent value in
    the direction of the factor.
    """

    resample_probability: float = 0.25
    factors: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        p = self.resample_probability
        if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise SamplerError(f"perturb: resample_probability must be in [0, 1], but got {p!r}")
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


Sampler = URS | Perturb

SAMPLERS = {"urs": URS, "perturb": Perturb}


def make_sampler(name: str, radius: float = 0.15, resample_probability: float = 0.25) -> Sampler:
    """Build a sampler from its command-line name."""
    if name == "urs":
        return URS(radius=radius)
    if name == "perturb":
        return Perturb(resample_probability=resample_probability)
    raise SamplerError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
