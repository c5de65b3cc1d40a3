"""hsmpi.schedule: sessions and rungs split the epochs evenly (or growing), the layout splits the members
evenly, and the population follows from the ranks."""

from __future__ import annotations

import pytest

from hsmpi.config import Config, ConfigError
from hsmpi.schedule import layout, resolve_population, session_epochs, with_rungs

# --- session_epochs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", range(1, 61))
def test_session_epochs_split_evenly(epochs: int) -> None:
    for sessions in range(1, epochs + 1):
        parts = session_epochs(epochs, sessions)
        assert len(parts) == sessions
        assert sum(parts) == epochs
        assert all(type(p) is int and p >= 1 for p in parts), parts
        assert max(parts) - min(parts) <= 1, (epochs, sessions, parts)
        assert set(parts) <= {epochs // sessions, -(-epochs // sessions)}


@pytest.mark.parametrize("epochs, sessions, parts", [
    (30, 6, [5, 5, 5, 5, 5, 5]),
    (1, 1, [1]),
    (5, 5, [1, 1, 1, 1, 1]),
    (7, 1, [7]),
])
def test_session_epochs_examples(epochs: int, sessions: int, parts: list[int]) -> None:
    assert session_epochs(epochs, sessions) == parts


@pytest.mark.parametrize("growth", [1.1, 1.5, 2.0, 4.0])
def test_session_epochs_grow(growth: float) -> None:
    for epochs in range(1, 61):
        for sessions in range(1, epochs + 1):
            parts = session_epochs(epochs, sessions, growth)
            assert len(parts) == sessions and sum(parts) == epochs
            assert all(type(p) is int and p >= 1 for p in parts), parts
            assert parts == sorted(parts), (epochs, sessions, growth, parts)  # never shorter than the one before
    parts = session_epochs(300, 6, growth)
    weights = [growth**k for k in range(6)]
    # one epoch each, and the other M - m in proportion to G**k, to rounding
    assert all(abs(p - 1 - 294 * w / sum(weights)) <= 1 for p, w in zip(parts, weights)), parts


def test_session_epochs_growth_examples() -> None:
    assert session_epochs(30, 6, 1.5) == [2, 3, 3, 5, 7, 10]
    assert session_epochs(30, 6, 2) == [1, 2, 3, 4, 7, 13]
    assert session_epochs(30, 6, 1.0) == session_epochs(30, 6) == [5] * 6


def test_rungs_split_each_session() -> None:
    assert with_rungs([5] * 3, None) == ([5] * 3, [False] * 3)
    assert with_rungs([5, 5], 0.5) == ([2, 3, 2, 3], [True, False] * 2)  # round(2.5) = 2
    assert with_rungs([4, 10], 0.25) == ([1, 3, 2, 8], [True, False] * 2)  # round(2.5) = 2 again
    assert with_rungs([2, 6], 0.9) == ([1, 1, 5, 1], [True, False] * 2), "one epoch left after each rung"
    assert with_rungs([1, 3], 0.1) == ([1, 1, 2], [False, True, False]), "one epoch: no rung; else one before"
    for sessions in ([5] * 6, [1, 2, 3, 4, 7, 13], [1] * 4):
        for at in (0.1, 0.5, 0.9):
            steps, rungs = with_rungs(sessions, at)
            assert sum(steps) == sum(sessions) and min(steps) >= 1 and len(rungs) == len(steps)
            assert len(steps) - sum(rungs) == len(sessions)


def test_session_epochs_large() -> None:
    parts = session_epochs(10_007, 13)
    assert sum(parts) == 10_007 and max(parts) - min(parts) <= 1


# --- layout ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("population", list(range(1, 41)) + [97, 128])
def test_layout_blocks_are_contiguous_and_even(population: int) -> None:
    for size in range(1, population + 1):
        blocks = layout(population, size)
        assert len(blocks) == size
        assert blocks[0].start == 0 and blocks[-1].stop == population
        for a, b in zip(blocks, blocks[1:]):
            assert a.stop == b.start
        assert all(isinstance(b, range) and b.step == 1 and len(b) >= 1 for b in blocks)
        assert [i for b in blocks for i in b] == list(range(population))
        sizes = [len(b) for b in blocks]
        assert max(sizes) - min(sizes) <= 1, sizes


@pytest.mark.parametrize("population, size, blocks", [
    (8, 1, [range(0, 8)]),
    (8, 4, [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]),
    (10, 4, [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]),
    (3, 3, [range(0, 1), range(1, 2), range(2, 3)]),
])
def test_layout_examples(population: int, size: int, blocks: list[range]) -> None:
    assert layout(population, size) == blocks


# --- resolve_population ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [(1, 8), (2, 8), (7, 8), (8, 8), (9, 9), (12, 12), (64, 64)])
def test_resolve_population_default(size: int, expected: int) -> None:
    assert resolve_population(Config(), size) == expected


@pytest.mark.parametrize("k, size", [(1, 1), (1, 4), (3, 4), (2, 16), (5, 1)])
def test_resolve_population_from_members_per_rank(k: int, size: int) -> None:
    assert resolve_population(Config(members_per_rank=k), size) == k * size


@pytest.mark.parametrize("population, size", [(1, 1), (5, 1), (5, 2), (5, 5), (100, 7)])
def test_resolve_population_given(population: int, size: int) -> None:
    assert resolve_population(Config(population=population), size) == population


def test_resolve_population_given_with_matching_members_per_rank() -> None:
    assert resolve_population(Config(population=12, members_per_rank=3), 4) == 12


@pytest.mark.parametrize("population, k, size", [(12, 3, 3), (12, 3, 5), (8, 1, 4), (4, 2, 4)])
def test_resolve_population_mismatch(population: int, k: int, size: int) -> None:
    with pytest.raises(ConfigError, match=rf"population \(-S {population}\) must equal ranks x members-per-rank "
                                          rf"\({size} x {k} = {size * k}\); give one of them"):
        resolve_population(Config(population=population, members_per_rank=k), size)


@pytest.mark.parametrize("population, size", [(1, 2), (4, 8), (7, 8)])
def test_resolve_population_more_ranks_than_members(population: int, size: int) -> None:
    with pytest.raises(ConfigError, match=rf"more ranks \({size}\) than members \(-S {population}\); "
                                          rf"use -S {size} or fewer ranks"):
        resolve_population(Config(population=population), size)


def test_resolve_population_refuses_more_islands_than_members() -> None:
    assert resolve_population(Config(population=4, islands=4), 2) == 4
    with pytest.raises(ConfigError, match=r"islands \(5\) must not exceed the members \(-S 4\)"):
        resolve_population(Config(population=4, islands=5), 2)
