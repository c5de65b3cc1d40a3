"""hsmpi.selection: best_member, then one contract every selection rule passes, then each rule's own behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hsmpi.algorithm.selection import (
    SELECTIONS,
    Islands,
    Prune,
    SelectionError,
    Truncation,
    Winner,
    best_member,
    finite_losses,
    make_selection,
    tie_broken,
)

NAN, INF = math.nan, math.inf

# --- best_member / finite_losses ------------------------------------------------------------------------------


@pytest.mark.parametrize("losses, best", [
    ([3.0, 1.0, 2.0], 1),
    ([NAN, 1.0, INF, 0.5], 3),
    ([NAN, NAN, 2.0], 2),
    ([INF, 5.0, NAN], 1),
    ([-INF, 1.0], 1),  # -inf is not a real loss either: the member diverged
    ([1e300, NAN], 0),
    ([-5.0, -7.0, NAN], 1),
    ([2.0, 1.0, 1.0, 1.0], 1),
    ([0.0, 0.0], 0),
    ([NAN, 4.0, 4.0], 1),
    ([7.0], 0),
])
def test_best_member(losses: list[float], best: int) -> None:
    got = best_member(np.array(losses))
    assert got == best and type(got) is int
    assert best_member(losses) == best  # type: ignore[arg-type]  # plain lists work too


@pytest.mark.parametrize("losses", [[INF, INF, INF], [NAN, NAN], [NAN, INF, -INF, NAN], [INF]])
def test_best_member_all_nonfinite_is_zero(losses: list[float]) -> None:
    assert best_member(np.array(losses)) == 0


def test_best_member_ignores_nan_everywhere() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        losses = rng.random(10)
        bad = rng.random(10) < 0.4
        losses[bad] = rng.choice([NAN, INF, -INF], size=int(bad.sum()))
        b = best_member(losses)
        if bad.all():
            assert b == 0
        else:
            assert np.isfinite(losses[b])
            assert losses[b] == np.min(losses[~bad])


def test_finite_losses_maps_nonfinite_to_inf_and_copies() -> None:
    losses = np.array([1.0, NAN, -INF, INF, -2.0], dtype=np.float32)
    before = losses.copy()
    out = finite_losses(losses)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, INF, INF, INF, -2.0])
    np.testing.assert_array_equal(losses, before)  # NaN compares equal in assert_array_equal
    out[0] = 99.0
    assert losses[0] == 1.0
    x = np.array([1.0, 2.0])
    assert finite_losses(x) is not x


# --- the contract --------------------------------------------------------------------------------------------

RULES = {
    "winner": Winner(),
    "truncation-default": Truncation(),
    "truncation-0.1": Truncation(0.1),
    "truncation-0.5": Truncation(0.5),
    "winner-by-name": make_selection("winner"),
    "truncation-by-name": make_selection("truncation"),
}
PRUNES = {"prune-default": Prune(), "prune-0.1": Prune(0.1), "prune-0.5": Prune(0.5)}  # a rung's rule: no CLI name
SIZES = list(range(1, 13)) + [31, 64]


def _cases() -> list:
    out = []
    for key, rule in {**RULES, **PRUNES}.items():
        for size in SIZES:
            out.append(pytest.param(rule, size, id=f"{key}-S{size}"))
    return out


def _loss_sets(size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sets = [rng.random(size), np.arange(size, 0, -1, dtype=float), np.zeros(size), np.full(size, NAN)]
    with_bad = rng.normal(size=size)
    with_bad[rng.random(size) < 0.3] = NAN
    with_bad[rng.random(size) < 0.2] = INF
    sets.append(with_bad)
    sets.append(rng.integers(0, 3, size).astype(float))  # many ties
    return sets


@pytest.mark.parametrize("rule, size", _cases())
def test_selection_contract(rule: Winner | Truncation | Prune, size: int) -> None:
    for seed in range(25):
        for losses in _loss_sets(size, seed):
            before = losses.copy()
            winner = best_member(losses)
            sources = rule.plan(losses, winner, np.random.default_rng(seed))
            # An int array with one source per member.
            assert isinstance(sources, np.ndarray)
            assert np.issubdtype(sources.dtype, np.integer)
            assert sources.shape == (size,)
            # Every source is a member.
            assert np.all((sources >= 0) & (sources < size)), sources
            # Donors never copy anyone in the same plan.
            donors = {int(s) for i, s in enumerate(sources) if s != i}
            assert all(sources[d] == d for d in donors), (losses, sources)
            # The best member is never replaced.
            assert sources[winner] == winner
            # Pure: the losses are untouched and the same rng gives the same plan.
            np.testing.assert_array_equal(losses, before)
            again = rule.plan(losses, winner, np.random.default_rng(seed))
            np.testing.assert_array_equal(sources, again)


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_selection_describe(rule: Winner | Truncation) -> None:
    d = rule.describe()
    assert d["name"] in SELECTIONS
    assert json.loads(json.dumps(d)) == d
    assert type(make_selection(d["name"], **({"fraction": d["fraction"]} if "fraction" in d else {}))) is type(rule)


@pytest.mark.parametrize("name", SELECTIONS)
def test_make_selection_builds_each_name(name: str) -> None:
    assert make_selection(name).describe()["name"] == name


# --- Winner --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 5, 16])
def test_winner_everyone_copies_the_winner(size: int) -> None:
    rng = np.random.default_rng(0)
    for winner in range(size):
        losses = rng.random(size)
        sources = Winner().plan(losses, winner, rng)
        assert sources.dtype == np.int64
        np.testing.assert_array_equal(sources, np.full(size, winner))


# --- Truncation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, fraction", [(8, 0.25), (10, 0.25), (10, 0.1), (5, 0.1), (20, 0.5), (16, 0.3),
                                            (7, 0.25), (2, 0.25), (64, 0.2)])
def test_truncation_bottom_copies_top(size: int, fraction: float) -> None:
    k = max(1, math.ceil(fraction * size))
    rng = np.random.default_rng(size)
    chosen: set[int] = set()
    for seed in range(60):
        losses = rng.permutation(size).astype(float)  # distinct losses, in a random order
        order = np.argsort(losses)
        top, bottom = set(order[:k].tolist()), set(order[size - k:].tolist())
        sources = Truncation(fraction).plan(losses, int(order[0]), np.random.default_rng(seed))
        for i in range(size):
            if i in bottom:
                assert sources[i] in top, (i, sources[i], top)
                chosen.add(int(losses[sources[i]]))
            else:
                assert sources[i] == i
        assert int(np.sum(sources != np.arange(size))) == k
    # The donor is drawn at random from the whole top, not always the best.
    assert chosen == set(range(k))


def test_truncation_example() -> None:
    losses = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])  # S=8, f=0.25: k=2
    for seed in range(20):
        s = Truncation(0.25).plan(losses, 1, np.random.default_rng(seed))
        assert s[2] in (1, 5) and s[6] in (1, 5)
        np.testing.assert_array_equal(np.delete(s, [2, 6]), [0, 1, 3, 4, 5, 7])


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_truncation_nonfinite_counts_as_worst(bad: float) -> None:
    losses = np.array([0.1, bad, 0.3, 0.2])  # k=1: the bad one is the bottom
    for seed in range(10):
        s = Truncation(0.25).plan(losses, 0, np.random.default_rng(seed))
        np.testing.assert_array_equal(s, [0, 0, 2, 3])


def test_truncation_ties_keep_lower_index_in_front() -> None:
    s = Truncation(0.25).plan(np.zeros(4), 0, np.random.default_rng(0))
    np.testing.assert_array_equal(s, [0, 1, 2, 0])
    s = Truncation(0.25).plan(np.full(4, NAN), 0, np.random.default_rng(0))
    np.testing.assert_array_equal(s, [0, 1, 2, 0])


def test_tie_broken_ranks_equal_scores_by_their_loss_and_keeps_the_rest() -> None:
    scores = np.array([-0.9, -0.9, -0.8, NAN, -0.9, INF, -0.8])
    losses = np.array([0.30, 0.10, 0.20, 0.05, 0.10, 0.01, NAN])
    places = tie_broken(scores, losses)
    # -0.9 first (members 1 and 4 tie on the loss too: the lower index), then 0; -0.8: 2, then 6 (NaN loss)
    np.testing.assert_array_equal(places, [2, 0, 3, INF, 1, INF, 4])
    assert best_member(places) == 1
    sources = Truncation(0.25).plan(places, 1, np.random.default_rng(0))  # the bottom 2 copy the top 2
    assert list(sources[[0, 1, 2, 4, 6]]) == [0, 1, 2, 4, 6] and set(sources[[3, 5]]) <= {1, 4}
    np.testing.assert_array_equal(tie_broken(np.array([3.0, 1.0, 2.0]), np.zeros(3)), [2, 0, 1])  # no ties


def test_truncation_single_member_keeps_itself() -> None:
    np.testing.assert_array_equal(Truncation(0.5).plan(np.array([1.0]), 0, np.random.default_rng(0)), [0])


def test_truncation_two_members() -> None:
    for f in (0.01, 0.25, 0.5):
        s = Truncation(f).plan(np.array([2.0, 1.0]), 1, np.random.default_rng(0))
        np.testing.assert_array_equal(s, [1, 1])


def test_truncation_draws_depend_on_rng() -> None:
    losses = np.arange(40, dtype=float)
    plans = {tuple(Truncation(0.25).plan(losses, 0, np.random.default_rng(s))) for s in range(10)}
    assert len(plans) > 1


@pytest.mark.parametrize("fraction", [0, 0.0, -0.25, 0.5000001, 0.75, 1.0, NAN, INF, "0.25", None, True])
def test_truncation_bad_fraction(fraction: object) -> None:
    with pytest.raises(SelectionError, match=r"truncation: fraction must be in \(0, 0.5\]") as err:
        Truncation(fraction)  # type: ignore[arg-type]
    assert repr(fraction) in str(err.value)
    with pytest.raises(SelectionError):
        make_selection("truncation", fraction=fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "Winner", "pbt", "tournament", "truncate"])
def test_unknown_selection(name: str) -> None:
    with pytest.raises(SelectionError, match=r"unknown selection") as err:
        make_selection(name)
    assert repr(name) in str(err.value)
    assert all(n in str(err.value) for n in SELECTIONS)


# --- Prune (a rung inside a session) ----------------------------------------------------------------------------


@pytest.mark.parametrize("size, fraction, moved", [(16, 0.25, 4), (8, 0.25, 2), (5, 0.25, 2), (3, 0.5, 1),
                                                   (2, 0.5, 1), (1, 0.25, 0), (10, 0.1, 1)])
def test_prune_restarts_the_worst_from_the_winner(size: int, fraction: float, moved: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(20):
        losses = rng.random(size)
        winner = best_member(losses)
        sources = Prune(fraction).plan(losses, winner, rng)
        restarted = [i for i, s in enumerate(sources) if s != i]
        assert len(restarted) == moved and all(sources[i] == winner for i in restarted)
        assert sorted(restarted) == sorted(np.argsort(losses)[size - moved:].tolist())  # the worst ones


def test_prune_takes_diverged_members_first_and_keeps_ties_in_index_order() -> None:
    sources = Prune(0.25).plan(np.array([0.3, NAN, 0.1, 0.2, 0.5, INF, 0.4, 0.6]), 2, np.random.default_rng(0))
    assert sources.tolist() == [0, 2, 2, 3, 4, 2, 6, 7]
    sources = Prune(0.25).plan(np.zeros(8), 0, np.random.default_rng(0))
    assert sources.tolist() == [0, 1, 2, 3, 4, 5, 0, 0], "equal: the last two indices restart"


@pytest.mark.parametrize("fraction", [0, 0.6, -0.1, "a"])
def test_prune_bad_fraction(fraction: object) -> None:
    with pytest.raises(SelectionError, match="prune-fraction must be in"):
        Prune(fraction)  # type: ignore[arg-type]


def test_islands_prune_within_each_island_and_a_rung_never_migrates() -> None:
    losses = np.random.default_rng(5).random(16)
    winner = best_member(losses)
    sources = Islands(2, every=1).plan(Prune(0.25), losses, winner, None, np.random.default_rng(0))
    for island in (0, 1):
        members = np.arange(island, 16, 2)
        best = members[int(np.argmin(losses[members]))]
        worst = members[np.argsort(losses[members])[-2:]]
        assert all(sources[w] == best for w in worst)
        assert all(sources[m] == m for m in members if m not in worst)


def test_selection_error_is_a_value_error() -> None:
    assert issubclass(SelectionError, ValueError)


# --- islands (sub-populations) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [Winner(), Truncation(0.25), Truncation(0.5)], ids=["winner", "trunc25", "trunc50"])
@pytest.mark.parametrize("count, n", [(2, 8), (3, 10), (4, 16), (5, 5)])
def test_islands_copy_within_each_island_and_migrate_the_best_to_the_others(rule: object, count: int,
                                                                            n: int) -> None:
    islands = Islands(count, every=2)
    rng = np.random.default_rng(count * 100 + n)
    for trial in range(60):
        losses = rng.random(n)
        losses[rng.random(n) < 0.1] = NAN
        winner = best_member(losses)
        session = trial % 4
        sources = islands.plan(rule, losses, winner, session, np.random.default_rng(trial))  # type: ignore[arg-type]
        donors = {int(s) for i, s in enumerate(sources) if s != i}
        assert all(sources[d] == d for d in donors)  # a donor never copies anyone in the same plan
        migrating = (session + 1) % 2 == 0
        for i, s in enumerate(sources):
            if s != i and not (migrating and s == winner):
                assert s % count == i % count, (i, s)  # a copy within the island
        for island in range(count):
            members = np.arange(island, n, count)
            if migrating and winner not in members:
                worst = members[np.argsort(finite_losses(losses[members]), kind="stable")[-1]]
                assert sources[worst] == winner  # the best of all replaces each other island's worst


def test_one_island_is_the_plain_rule_and_a_session_without_migration_moves_nothing_across() -> None:
    losses = np.random.default_rng(3).random(12)
    winner = best_member(losses)
    for rule in (Winner(), Truncation(0.25)):
        plain = rule.plan(losses, winner, np.random.default_rng(9))
        one = Islands(1, every=1).plan(rule, losses, winner, 0, np.random.default_rng(9))
        assert np.array_equal(plain, one)
    # the winner rule on two islands: each island copies its own winner until a migration
    sources = Islands(2, every=3).plan(Winner(), losses, winner, 0, np.random.default_rng(0))
    for island in (0, 1):
        members = np.arange(island, 12, 2)
        assert set(sources[members]) == {members[int(np.argmin(losses[members]))]}


@pytest.mark.parametrize("count, every", [(0, 2), (2, 0), (True, 2), (2, 1.5)])
def test_islands_refuse_bad_settings(count: object, every: object) -> None:
    with pytest.raises(SelectionError, match="must be an integer of at least 1"):
        Islands(count, every)  # type: ignore[arg-type]
