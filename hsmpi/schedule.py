"""The run's shape: epochs per session and per step (a session split at its rung), and members per rank.

Pure functions of the settings and the number of ranks, so every rank, a
resumed run and the report work out the same schedule and layout.
"""

from __future__ import annotations

from hsmpi.config import Config, ConfigError


def session_epochs(epochs: int, sessions: int, growth: float = 1.0) -> list[int]:
    """Epochs per session: M split into m parts that add up to M, near-equal, or with `growth` G each about G
    times the one before (every session gets one epoch, and the other M - m go in proportion to G**k)."""
    if growth == 1.0:  # the split runs have always had (the formula below rounds some M and m differently)
        bounds = [round(k * epochs / sessions) for k in range(sessions + 1)]
    else:
        weights = [growth**k for k in range(sessions)]
        share = [sum(weights[:k]) / sum(weights) for k in range(sessions + 1)]
        bounds = [k + round((epochs - sessions) * share[k]) for k in range(sessions + 1)]
        return sorted(b - a for a, b in zip(bounds, bounds[1:]))  # rounding can put a longer one first
    return [b - a for a, b in zip(bounds, bounds[1:])]


def with_rungs(sessions: list[int], prune_at: float | None) -> tuple[list[int], list[bool]]:
    """The steps the loop runs: each session of `sessions` (epochs) split at its rung, `prune_at` of its epochs
    (rounded, at least one epoch on each side), into two steps; and which steps end at a rung.  A session of
    one epoch has no rung; without `prune_at` the steps are the sessions."""
    steps: list[int] = []
    rungs: list[bool] = []
    for epochs in sessions:
        if prune_at is not None and epochs > 1:
            first = min(epochs - 1, max(1, round(prune_at * epochs)))
            steps += [first, epochs - first]
            rungs += [True, False]
        else:
            steps.append(epochs)
            rungs.append(False)
    return steps, rungs


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
    if config.islands > population:
        raise ConfigError(f"islands ({config.islands}) must not exceed the members (-S {population})")
    return population
