"""Selection rules: who copies whom after a session.

A rule is a small object with one pure method,
`plan(losses, winner, rng) -> sources`, where `sources[i]` is the member
whose weights, optimizer state and (perturbed) hyperparameters member i takes
next; `sources[i] == i` means member i carries on as it is.  Donors never copy
anyone in the same plan, so every donor's state can be sent before any member
loads a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class SelectionError(ValueError):
    """A selection name or option that does not validate."""


def finite_losses(losses: np.ndarray) -> np.ndarray:
    """Losses with NaN and inf mapped to +inf: a diverged member never wins."""
    out = np.asarray(losses, dtype=np.float64).copy()
    out[~np.isfinite(out)] = np.inf
    return out


def best_member(losses: np.ndarray) -> int:
    """Index of the smallest loss; NaN/inf count as +inf and ties go to the lowest index."""
    return int(np.argmin(finite_losses(losses)))  # argmin returns the first of equal minima


def tie_broken(scores: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Each member's place in the order by (score, loss, index), as a lower-is-better score: equal scores
    are ranked by their loss, distinct ones keep their order, and a score that is not finite stays +inf
    (it never wins).  The selection rules read only the order and finiteness of what they are given."""
    scores, losses = finite_losses(scores), finite_losses(losses)
    order = np.lexsort((np.arange(len(scores)), losses, scores))
    places = np.empty(len(scores), dtype=np.float64)
    places[order] = np.arange(len(scores), dtype=np.float64)
    places[~np.isfinite(scores)] = np.inf
    return places


@dataclass(frozen=True)
class Winner:
    """The paper's rule: one winner, everyone else becomes a copy of it."""

    def plan(self, losses: np.ndarray, winner: int, rng: np.random.Generator) -> np.ndarray:
        sources = np.full(len(losses), winner, dtype=np.int64)
        return sources

    def describe(self) -> dict[str, Any]:
        return {"name": "winner"}


def _check_fraction(label: str, fraction: Any) -> None:
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 0.5):
        raise SelectionError(f"{label} must be in (0, 0.5], but got {fraction!r}")


def ranked(losses: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """Members from best to worst, and how many make up `fraction` of them: at least one, at most half,
    so the top and the bottom never overlap (a donor must not copy anyone) and the winner is never at
    the bottom.  The sort is stable on (loss, index): ties keep the lower index in front, as MINLOC does."""
    n = len(losses)
    return np.argsort(finite_losses(losses), kind="stable"), min(max(1, math.ceil(fraction * n)), n // 2)


@dataclass(frozen=True)
class Truncation:
    """PBT's truncation selection: the bottom `fraction` copies random members of the top `fraction`."""

    fraction: float = 0.25

    def __post_init__(self) -> None:
        _check_fraction("truncation: fraction", self.fraction)

    def plan(self, losses: np.ndarray, winner: int, rng: np.random.Generator) -> np.ndarray:
        n = len(losses)
        sources = np.arange(n, dtype=np.int64)
        order, k = ranked(losses, self.fraction)
        top, bottom = order[:k], order[n - k:]
        for i in bottom:
            sources[i] = int(top[int(rng.integers(len(top)))])
        return sources

    def describe(self) -> dict[str, Any]:
        return {"name": "truncation", "fraction": self.fraction}


@dataclass(frozen=True)
class Prune:
    """A rung inside a session (--prune-at), Hyperband's way: the worst `fraction` stop where they are and
    restart from the best member, so their remaining epochs go to its state; everyone else trains on."""

    fraction: float = 0.25

    def __post_init__(self) -> None:
        _check_fraction("prune-fraction", self.fraction)

    def plan(self, losses: np.ndarray, winner: int, rng: np.random.Generator) -> np.ndarray:
        n = len(losses)
        sources = np.arange(n, dtype=np.int64)
        order, k = ranked(losses, self.fraction)
        sources[order[n - k:]] = winner
        return sources

    def describe(self) -> dict[str, Any]:
        return {"name": "prune", "fraction": self.fraction}


Selection = Winner | Truncation | Prune


@dataclass(frozen=True)
class Islands:
    """Sub-populations: member i lives on island i mod `count`.  A selection rule runs within each island
    (its own winner, its own top and bottom), so no island's copies come from another; every `every`
    sessions the best member of all (`winner`) replaces the worst member of each other island."""

    count: int
    every: int = 2

    def __post_init__(self) -> None:
        for name, value in (("islands", self.count), ("migrate-every", self.every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SelectionError(f"{name} must be an integer of at least 1, but got {value!r}")

    def members(self, island: int, population: int) -> np.ndarray:
        return np.arange(island, population, self.count, dtype=np.int64)

    def plan(self, rule: Selection, losses: np.ndarray, winner: int, session: int | None,
             rng: np.random.Generator) -> np.ndarray:
        """`rule`'s plan on each island in turn (one stream, island by island), then the migration after
        sessions every, 2 x every, ... (`session` is 0-based; None: a rung, which never migrates)."""
        losses = finite_losses(losses)
        n = len(losses)
        sources = np.arange(n, dtype=np.int64)
        for island in range(self.count):
            members = self.members(island, n)
            if len(members):
                sources[members] = members[rule.plan(losses[members], best_member(losses[members]), rng)]
        if session is not None and (session + 1) % self.every == 0:
            for island in range(self.count):
                members = self.members(island, n)
                if len(members) and winner not in members:
                    # the island's worst (the last of equals); never a donor, since the rules never make the
                    # worst of two or more members a source, and a lone member has no one copying it
                    sources[int(members[np.argsort(losses[members], kind="stable")[-1]])] = winner
        return sources

    def describe(self) -> dict[str, Any]:
        return {"islands": self.count, "migrate_every": self.every}

SELECTIONS = ("winner", "truncation")


def make_selection(name: str, fraction: float = 0.25) -> Selection:
    """Build a selection rule from its command-line name."""
    if name == "winner":
        return Winner()
    if name == "truncation":
        return Truncation(fraction=fraction)
    raise SelectionError(f"unknown selection {name!r}; expected one of {list(SELECTIONS)}")
