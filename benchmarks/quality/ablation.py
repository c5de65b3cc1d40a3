"""hsmpi's own variants: the ablation table (one option changed from the defaults) and the m sweep."""

from __future__ import annotations

from benchmarks.quality import methods
from benchmarks.quality.runner import Method, hsmpi_defaults

# Each variant changes one documented option of hsmpi from its defaults.
VARIANTS: dict[str, dict[str, object]] = {
    "paper-minimal": {"select": "winner", "radius": 0.15, "returns": "member", "independent_init": False},  # one
    # winner, radius 0.15, the last winner returned, every member from the same weights
    "member": {"returns": "member"},  # return the best member always (the default until the ablation below)
    "winner": {"select": "winner"},  # the paper's selection rule, otherwise the defaults
    "elitism": {"elitism": True},  # return the best member of any session
    "elitism-holdout-0.3": {"elitism": True, "holdout": 0.3},  # ... judged on 30% of validation held back
    "radius-0.15": {"radius": 0.15},  # the paper's box
    "radius-0.5": {"radius": 0.5},  # a wider box
    "shrink-radius": {"radius_final": 0.05},  # the box shrinks from 0.3 to 0.05 over the sessions
    "fraction-0.5": {"truncation_fraction": 0.5},  # the bottom half copies the top half
    "fraction-0.125": {"truncation_fraction": 0.125},  # the bottom eighth copies the top eighth
    "average": {"returns": "average"},  # return the final population's averaged prediction
    "average-top4": {"returns": "average", "average_top": 4},  # ... of its best 4 on validation
    "auto": {"returns": "auto"},  # the average when it validates better than the best member (now the default)
    "auto-top4": {"returns": "auto", "average_top": 4},
    # where auto returns the greedy ensemble: one selection on the whole split (the default until 2026-12-07)
    "one-selection": {"greedy_bags": 1},
    # ... selected on 20 resamples, picks summed
    "bags-20": {"greedy_bags": 20, "greedy_stop": "in-bag", "greedy_whole": False},
    # ... each bag's size chosen on the rows it left out
    "bags-20-oob": {"greedy_bags": 20, "greedy_stop": "out-of-bag", "greedy_whole": False},
    # ... half the weight from one selection on the whole split, half from those bags (the default since 2026-12-07)
    "blend-oob": {"greedy_bags": 20, "greedy_stop": "out-of-bag", "greedy_whole": True},
    "smooth-2": {"smooth": 2},  # select on the mean of the validation scores after a session's last 2 epochs
    "smooth-3": {"smooth": 3},  # ... its last 3
    "islands-2": {"islands": 2},  # two sub-populations of 8, the best of all migrating every 2 sessions
    "islands-4": {"islands": 4},  # four of 4
    "tpe": {"sampler": "tpe"},  # of 16 draws in the box, the one a Parzen model of the history favours
    "tpe-4": {"sampler": "tpe", "candidates": 4},  # ... of 4 (closer to urs, more diverse)
    "tpe-64": {"sampler": "tpe", "candidates": 64},  # ... of 64 (the model's choice, nearly)
    "growth-1.5": {"session_growth": 1.5},  # sessions of 2, 3, 3, 5, 7, 10 epochs at M = 30, m = 6
    "growth-2": {"session_growth": 2.0},  # ... of 1, 2, 3, 4, 7, 13
    "prune-0.4": {"prune_at": 0.4},  # a rung after 2 of each session's 5 epochs: the worst 4 restart from the best
    "prune-0.4-q0.125": {"prune_at": 0.4, "prune_fraction": 0.125},  # ... the worst 2
    # The benchmark's hsmpi selects on the validation loss, as the baselines do (since 2026-12-03; before, it
    # followed digits-cnn's own objective, its accuracy).  These variants measure the task's own objective:
    "task-objective": {"objective": None},  # select on the task's objective (digits-cnn: accuracy, maximised)
    "tie-loss": {"objective": None, "tie_break": "loss"},  # ... its ties ranked by the validation loss
    "task-objective-smooth-2": {"objective": None, "smooth": 2},  # ... the mean of its last 2 evaluations
    "objective-loss": {"objective": "loss"},  # the loss named (as the defaults now do in the benchmark)
    "objective-loss-smooth-2": {"objective": "loss", "smooth": 2},
    "plateau-0.01": {"plateau": 0.01},  # a session ends once its best improves by under 1% in an epoch
    "plateau-0.03": {"plateau": 0.03},  # ... under 3%
    "independent-init": {"independent_init": True},  # every member from its own weights (the default since
    # 2026-12-05: the same cells as the defaults' since)
    "shared-init": {"independent_init": False},  # every member from the same weights (the default before)
    "one-at-a-time": {"vectorize": "off"},  # the members trained one after the other (the CPU's path until
    # 2026-12-06): the same search, for the seconds per cell
    "explore-0.1": {"explore": 0.1},  # each parameter drawn from its whole range with chance 0.1, else the box
    "explore-0.25": {"explore": 0.25},  # ... 0.25 (hsmpi-pbt's resample chance, with the box for the rest)
    "m3": {"sessions": 3},  # three sessions of 10 epochs at M = 30 (fewer, longer exploitation steps)
    "m12": {"sessions": 12},  # twelve sessions: at M = 60, five epochs each, as the default's six are at M = 30
}


def variants(names: list[str] | None = None) -> list[Method]:
    """The ablation's methods: every variant, or those `names` (checked by the command line)."""
    return [Method(f"hsmpi/{name}", methods.hsmpi_method, hsmpi_defaults(**opts), parallel=True)
            for name, opts in VARIANTS.items() if names is None or name in names]


def sweep(epochs: int) -> list[Method]:
    """hsmpi with m sessions for each m that divides M (m = 1 is random search with the shared init)."""
    counts = [m for m in (1, 2, 3, 5, 6, 10, 15, 30) if m <= epochs]
    return [Method(f"hsmpi/m{m}", methods.hsmpi_method, hsmpi_defaults(sessions=m), parallel=True) for m in counts]
