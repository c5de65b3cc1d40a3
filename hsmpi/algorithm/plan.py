"""The decision after a session, as pure functions of the losses and the random streams.

`plan_session` says who copies whom and which new hyperparameters each copy
gets; `is_new_best` says whether this session's winner becomes the model the
run returns; `sampler_for` gives the neighbourhood for a session's draws.  No
MPI, no torch: rank 0 calls them, and they are tested with plain pytest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hsmpi.algorithm.sampling import TPE, URS, Observation, Sampler
from hsmpi.algorithm.selection import Islands, Selection
from hsmpi.algorithm.space import HParams, Space

BEST_EVER = -1  # a source meaning "the best state seen so far" (every member diverged)
ALL_DIVERGED = "every member diverged: restarting all from the best state so far"
RUNG = "rung: "  # how the note of a rung's plan (--prune-at) begins: "rung: members 2, 7 restart from member 5"


@dataclass(frozen=True)
class Plan:
    """What happens after one session.

    `sources[i]` is the member whose weights and optimizer state member i
    takes: i itself means it carries on as it is, BEST_EVER the best state so
    far.  `new_hparams` holds the hyperparameters of every member that takes
    another's state (drawn near its source's), keyed by member index.
    """

    sources: np.ndarray
    new_hparams: dict[int, HParams] = field(default_factory=dict)
    note: str = ""
    winner: int = 0  # the session's best member (lowest score; the lowest index among equals)
    winner_score: float = math.inf

    @property
    def donors(self) -> list[int]:
        """The states that travel: every source some other member takes, in order (BEST_EVER first)."""
        return sorted({int(s) for i, s in enumerate(self.sources) if s != i})


def plan_session(*, scores: np.ndarray, winner: int, winner_score: float, hparams: Sequence[HParams],
                 best_hparams: HParams, last: bool, selection: Selection, sampler: Sampler, space: Space,
                 selection_rng: np.random.Generator, hparam_rngs: Sequence[np.random.Generator],
                 islands: Islands | None = None, session: int | None = 0) -> Plan:
    """Who copies whom after this session, and the copies' new hyperparameters.

    `scores` are every member's lower-is-better numbers (the validation loss,
    or the objective signed so); `winner` has the lowest, `winner_score`.
    After the last session nobody copies.  If no member has a finite score,
    all restart from the best state so far, with values drawn near its.
    Otherwise the selection rule decides (with `islands`, within each island,
    and migrations after session `session`; None: a rung, which never
    migrates); each copy's values are drawn near its source's with the copy's
    own stream, so the draws do not depend on the order of members or on the
    layout.
    """
    population = len(hparams)
    note = ""
    if last:
        sources = np.arange(population, dtype=np.int64)
    elif not math.isfinite(winner_score):
        note = ALL_DIVERGED
        sources = np.full(population, BEST_EVER, dtype=np.int64)
    elif islands is not None:
        sources = islands.plan(selection, scores, winner, session, selection_rng)
    else:
        sources = selection.plan(scores, winner, selection_rng)
    new_hparams = {}
    for i, source in enumerate(sources):
        if source != i:
            base = best_hparams if source == BEST_EVER else hparams[source]
            new_hparams[i] = sampler.neighbour(space, base, hparam_rngs[i])
    return Plan(sources, new_hparams, note, winner, winner_score)


def is_new_best(judged: float, best_so_far: float, elitism: bool) -> bool:
    """Does this session's winner, with loss `judged`, become the model the run returns?

    With elitism only a better one does; without it every finite winner does,
    so the run returns the last session's best.
    """
    return judged < best_so_far or (not elitism and math.isfinite(judged))


def sampler_for(sampler: Sampler, session: int, sessions: int, radius: float,
                radius_final: float | None, observed: Sequence[Observation] = ()) -> Sampler:
    """The sampler for the draws after `session` (0-based) of `sessions`.

    With `radius_final`, the box of urs (and tpe) shrinks geometrically from
    `radius` (the draws after the first session) to `radius_final` (after the
    last session that draws).  tpe gets the history so far, `observed`.
    """
    shrunk = radius
    if radius_final is not None:
        draws = sessions - 1  # sessions followed by a draw
        t = min(session, draws - 1) / (draws - 1) if draws > 1 else 0.0
        shrunk = radius * (radius_final / radius) ** t
    if isinstance(sampler, TPE):
        return sampler.with_history(observed, shrunk)
    if radius_final is None or not isinstance(sampler, URS):
        return sampler
    return URS(radius=shrunk, explore=sampler.explore)
