"""Hyperparameter spaces: typed parameters that validate when built.

Every parameter maps its values to normalised coordinates in [0, 1]
(`encode`) and back (`decode`), log-scaled where the parameter is; samplers
work in those coordinates so one neighbourhood radius means the same thing for
every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from hsmpi.text import clean

Value = Union[float, int, str, bool]


class SpaceError(ValueError):
    """A space or a hyperparameter value that does not validate."""


def _number(name: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{name}: {what} must be a finite number, but got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Uniform:
    """A real value drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low = _number(type(self).__name__, "low", self.low)
        high = _number(type(self).__name__, "high", self.high)
        if not low < high:
            name = type(self).__name__
            raise SpaceError(f"{name}: low < high must hold, but got (low={self.low!r}, high={self.high!r})")

    def _to_unit(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)

    def _from_unit(self, u: float) -> float:
        return self.low + u * (self.high - self.low)

    def encode(self, value: Value) -> float:
        return float(np.clip(self._to_unit(float(value)), 0.0, 1.0))

    def decode(self, u: float) -> Value:
        return float(np.clip(self._from_unit(float(np.clip(u, 0.0, 1.0))), self.low, self.high))

    def sample(self, rng: np.random.Generator) -> Value:
        return self.decode(float(rng.random()))

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A positive real value whose logarithm is uniform on [log low, log high]."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.low > 0:
            raise SpaceError(f"LogUniform: low > 0 must hold, but got (low={self.low!r}, high={self.high!r})")

    def _to_unit(self, value: float) -> float:
        if value <= 0:
            return 0.0
        return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))

    def _from_unit(self, u: float) -> float:
        return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))


@dataclass(frozen=True)
class IntUniform(Uniform):
    """An integer drawn uniformly from {low, ..., high}."""

    def __post_init__(self) -> None:
        for what in ("low", "high"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpaceError(f"IntUniform: {what} must be an integer, but got {value!r}")
        super().__post_init__()

    def _to_unit(self, value: float) -> float:
        # Each integer owns an equal slice of [0, 1]; its centre is its code.
        return (value - self.low + 0.5) / (self.high - self.low + 1)

    def _from_unit(self, u: float) -> float:
        return self.low + math.floor(u * (self.high - self.low + 1))

    def decode(self, u: float) -> Value:
        return int(min(max(self._from_unit(float(np.clip(u, 0.0, 1.0))), self.low), self.high))

    def contains(self, value: Any) -> bool:
        return bool(isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    and self.low <= value <= self.high)


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values; numbers are ordered, so neighbours are adjacent values."""

    values: tuple[Value, ...]

    def __init__(self, values: Any) -> None:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise SpaceError(f"Choice: values must be a list, but got {values!r}")
        values = tuple(values)
        if not values:
            raise SpaceError("Choice: values must not be empty")
        for v in values:
            if not isinstance(v, (int, float, str, bool)):
                raise SpaceError(f"Choice: values must be numbers, strings or booleans, but got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise SpaceError(f"Choice: values must be finite, but got {v!r}")
            if isinstance(v, str) and clean(v) != v:  # it would not come back the same from a results file
                raise SpaceError(f"Choice: string values must be printable UTF-8 without control characters, "
                                 f"but got {v!r}")
        if len(set(values)) != len(values):
            raise SpaceError(f"Choice: values must be distinct, but got {list(values)!r}")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            values = tuple(sorted(values))  # numbers are ordered: neighbours are the next smaller/larger
        object.__setattr__(self, "values", values)

    @property
    def ordered(self) -> bool:
        """Numeric choices have an order, so 'a neighbouring choice' means something."""
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)

    def index(self, value: Value) -> int:
        for i, v in enumerate(self.values):
            # Numbers compare by value (32 == 32.0); anything else must also match in type (True != 1).
            same_kind = type(v) is type(value) or (self.ordered and isinstance(value, (int, float, np.number)))
            if same_kind and isinstance(value, bool) == isinstance(v, bool) and v == value:
                return i
        raise SpaceError(f"Choice: {value!r} is not one of {list(self.values)!r}")

    def encode(self, value: Value) -> float:
        n = len(self.values)
        return (self.index(value) + 0.5) / n

    def decode(self, u: float) -> Value:
        n = len(self.values)
        return self.values[min(int(math.floor(float(np.clip(u, 0.0, 1.0)) * n)), n - 1)]

    def sample(self, rng: np.random.Generator) -> Value:
        return self.values[int(rng.integers(len(self.values)))]

    def contains(self, value: Any) -> bool:
        try:
            self.index(value)
        except SpaceError:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {"type": "Choice", "values": list(self.values)}


Param = Union[Uniform, LogUniform, IntUniform, Choice]
Space = Mapping[str, Param]
HParams = dict[str, Value]


def validate_space(space: Any) -> dict[str, Param]:
    """Check a task's space: a non-empty dict of names to parameter objects."""
    if not isinstance(space, Mapping) or not space:
        raise SpaceError(f"the task's space must be a non-empty dict of name -> parameter, but got {space!r}")
    for name, param in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SpaceError(f"space: parameter names must be identifiers, but got {name!r}")
        if not isinstance(param, (Uniform, Choice)):
            raise SpaceError(
                f"space: {name} must be hsmpi.Uniform, LogUniform, IntUniform or Choice, but got {param!r}"
            )
    if "batch_size" in space:
        p = space["batch_size"]
        ok = isinstance(p, IntUniform) and p.low >= 1 or (
            isinstance(p, Choice) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p.values)
        )
        if not ok:
            raise SpaceError(f"space: batch_size must be an IntUniform or Choice of positive integers, but got {p!r}")
    return dict(space)


def sample_space(space: Space, rng: np.random.Generator) -> HParams:
    """One hyperparameter set drawn from the whole space (names in the space's order)."""
    return {name: param.sample(rng) for name, param in space.items()}


def check_hparams(space: Space, hp: Mapping[str, Any]) -> None:
    """Raise SpaceError unless `hp` names exactly the space's parameters, each in range."""
    missing = [n for n in space if n not in hp]
    extra = [n for n in hp if n not in space]
    if missing or extra:
        raise SpaceError(f"hyperparameters {sorted(hp)} do not match the space {sorted(space)}")
    for name, param in space.items():
        if not param.contains(hp[name]):
            raise SpaceError(f"hyperparameter {name}={hp[name]!r} is outside {param!r}")


def describe_space(space: Space) -> dict[str, dict[str, Any]]:
    """A JSON-able description (stored in results and checkpoints)."""
    return {name: param.describe() for name, param in space.items()}
