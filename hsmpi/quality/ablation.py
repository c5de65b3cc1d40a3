"""hsmpi's own variants: the ablation table (one option changed from the defaults) and the m sweep."""

from __future__ import annotations

from . import methods
from .runner import Method, hsmpi_defaults

# Each variant changes one documented option of hsmpi from its defaults.
VARIANTS: dict[str, dict[str, object]] = {
    "paper-minimal": {"select": "winner", "elitism": False},  # one winner, the last winner returned
    "winner": {"select": "winner"},  # the paper's selection, with elitism
    "no-elitism": {"elitism": False},  # truncation, the last session's best returned
    "fraction-0.5": {"truncation_fraction": 0.5},  # the bottom half copies the top half
    "radius-0.3": {"radius": 0.3},
    "shrink-radius": {"radius_final": 0.03},  # the box shrinks from 0.15 to 0.03 over the sessions
    "holdout-0.3": {"holdout": 0.3},  # 30% of the validation split judges the returned model only
    "holdout-0.5": {"holdout": 0.5},
}


def variants() -> list[Method]:
    return [Method(f"hsmpi/{name}", methods.hsmpi_method, hsmpi_defaults(**opts), parallel=True)
            for name, opts in VARIANTS.items()]


def sweep(epochs: int) -> list[Method]:
    """hsmpi with m sessions for each m that divides M (m = 1 is random search with the shared init)."""
    counts = [m for m in (1, 2, 3, 5, 6, 10, 15, 30) if m <= epochs]
    return [Method(f"hsmpi/m{m}", methods.hsmpi_method, hsmpi_defaults(sessions=m), parallel=True) for m in counts]
