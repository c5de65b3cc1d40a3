"""hsmpi.algorithm.plan: the decision after a session, as pure functions (plain pytest, no MPI)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hsmpi.algorithm.plan import ALL_DIVERGED, BEST_EVER, Plan, is_new_best, plan_session, sampler_for
from hsmpi.algorithm.sampling import TPE, URS, Observation, Perturb
from hsmpi.algorithm.selection import Truncation, Winner
from hsmpi.algorithm.space import Choice, LogUniform, Uniform
from hsmpi.algorithm.streams import SearchStreams

SPACE = {"lr": LogUniform(1e-4, 1e-1), "beta1": Uniform(0.5, 0.99), "act": Choice(["relu", "tanh"])}


def _hparams(n: int) -> list[dict]:
    return [{"lr": 10 ** -(1 + i % 3), "beta1": 0.5 + 0.05 * i, "act": "relu" if i % 2 else "tanh"} for i in range(n)]


def _plan(val: list[float], last: bool = False, selection: object = Winner(), seed: int = 0,
          best: dict | None = None) -> Plan:
    n = len(val)
    streams = SearchStreams(seed, n)
    finite = [v if math.isfinite(v) else math.inf for v in val]
    winner = int(np.argmin(finite))
    return plan_session(scores=np.array(val), winner=winner, winner_score=float(min(finite)), hparams=_hparams(n),
                        best_hparams=best or _hparams(1)[0], last=last, selection=selection, sampler=URS(0.3),
                        space=SPACE, selection_rng=streams.selection, hparam_rngs=streams.hparams)


def test_winner_rule_everyone_copies_the_winner_with_new_values_near_its() -> None:
    plan = _plan([0.5, 0.2, 0.9, 0.4])
    assert plan.sources.tolist() == [1, 1, 1, 1]
    assert sorted(plan.new_hparams) == [0, 2, 3]  # the winner keeps its own
    assert plan.donors == [1] and plan.note == ""
    winner = _hparams(4)[1]
    for hp in plan.new_hparams.values():
        assert set(hp) == set(SPACE)
        assert abs(SPACE["beta1"].encode(hp["beta1"]) - SPACE["beta1"].encode(winner["beta1"])) <= 0.3 + 1e-12


def test_after_the_last_session_nobody_copies() -> None:
    plan = _plan([0.5, 0.2, 0.9, 0.4], last=True)
    assert plan.sources.tolist() == [0, 1, 2, 3] and plan.new_hparams == {} and plan.donors == []


def test_when_every_member_diverged_all_restart_from_the_best_so_far() -> None:
    best = {"lr": 1e-3, "beta1": 0.9, "act": "relu"}
    plan = _plan([math.nan, math.inf, math.nan], best=best)
    assert (plan.sources == BEST_EVER).all() and plan.note == ALL_DIVERGED
    assert sorted(plan.new_hparams) == [0, 1, 2] and plan.donors == [BEST_EVER]
    for hp in plan.new_hparams.values():
        assert abs(SPACE["lr"].encode(hp["lr"]) - SPACE["lr"].encode(best["lr"])) <= 0.3 + 1e-12


def test_truncation_copies_the_bottom_from_the_top() -> None:
    plan = _plan([0.1, 0.8, 0.2, 0.9, 0.3, 0.7, 0.4, 0.6], selection=Truncation(0.25))
    bottom = {3, 1}  # the two worst
    assert sorted(plan.new_hparams) == sorted(bottom)
    assert all(plan.sources[i] in (0, 2) for i in bottom)  # from the two best
    assert all(plan.sources[i] == i for i in set(range(8)) - bottom)


def test_the_plan_is_a_function_of_the_seed_alone() -> None:
    a, b = _plan([0.5, 0.2, 0.9, 0.4], seed=5), _plan([0.5, 0.2, 0.9, 0.4], seed=5)
    assert a.sources.tolist() == b.sources.tolist() and a.new_hparams == b.new_hparams
    assert _plan([0.5, 0.2, 0.9, 0.4], seed=6).new_hparams != a.new_hparams


def test_a_copys_draw_uses_its_own_stream_so_other_members_do_not_move_it() -> None:
    """Member 3's new values come from stream 3 alone: the same whoever else copies."""
    full = _plan([0.5, 0.2, 0.9, 0.4], selection=Winner(), seed=2)
    streams = SearchStreams(2, 4)
    alone = URS(0.3).neighbour(SPACE, _hparams(4)[1], streams.hparams[3])
    assert full.new_hparams[3] == alone


@pytest.mark.parametrize("judged, best, elitism, expected", [
    (0.5, math.inf, True, True), (0.5, 0.4, True, False), (0.3, 0.4, True, True),
    (0.5, 0.4, False, True),  # without elitism every finite winner is the one returned
    (math.inf, 0.4, False, False), (math.nan, math.inf, False, False), (math.nan, math.inf, True, False),
])
def test_is_new_best(judged: float, best: float, elitism: bool, expected: bool) -> None:
    assert is_new_best(judged, best, elitism) is expected


def test_sampler_for_shrinks_the_box_geometrically_from_the_first_to_the_last_draw() -> None:
    radii = [sampler_for(URS(0.3), k, 5, 0.3, 0.03).radius for k in range(5)]  # type: ignore[union-attr]
    assert radii[0] == pytest.approx(0.3) and radii[3] == pytest.approx(0.03) and radii[4] == pytest.approx(0.03)
    assert all(a > b for a, b in zip(radii[:3], radii[1:4]))
    assert sampler_for(URS(0.3), 2, 5, 0.3, None) == URS(0.3)
    assert sampler_for(Perturb(), 2, 5, 0.3, 0.03) == Perturb()
    assert sampler_for(URS(0.3, explore=0.2), 3, 5, 0.3, 0.03) == URS(radius=radii[3], explore=0.2)


def test_sampler_for_gives_tpe_the_history_and_the_shrunk_box() -> None:
    seen = [Observation({"lr": 0.1}, True), Observation({"lr": 0.2}, False)]
    bound = sampler_for(TPE(0.3, 8), 4, 5, 0.3, 0.03, seen)
    assert bound == TPE(0.03, 8, tuple(seen))
    assert sampler_for(TPE(0.3, 8), 0, 5, 0.3, None, seen) == TPE(0.3, 8, tuple(seen))


def test_search_streams_round_trip_their_state() -> None:
    a = SearchStreams(9, 3)
    a.hparams[1].random(5)
    a.selection.random(2)
    b = SearchStreams(9, 3)
    b.load_state_dict(a.state_dict())
    assert [r.random() for r in a.hparams] == [r.random() for r in b.hparams]
    assert a.selection.random() == b.selection.random()
