"""Continuing a run from its checkpoint: which settings it keeps, which file, which sessions follow.

A resumed run may change -m and -M (to extend a finished run) and anything
that does not change the search's identity; the task, S, the seed and the
space must match.  Read by rank 0; every rank learns the outcome.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hsmpi.algorithm.space import describe_space
from hsmpi.config import Config
from hsmpi.io import checkpoint
from hsmpi.parallel.comm import SerialComm
from hsmpi.schedule import resolve_population, session_epochs, with_rungs
from hsmpi.text import say

# Settings a resumed run must share with its checkpoint (the rest may change, e.g. -m and -M to extend it).
MUST_MATCH = ("task", "population", "seed")


def resume_options(options: dict[str, Any], comm: SerialComm) -> dict[str, Any]:
    """With `resume`, the checkpoint's settings under the ones given explicitly (collective)."""
    resume = options.get("resume")
    if not resume:
        return options
    saved, error = None, None
    if comm.is_root:
        try:
            where = checkpoint.locate(resume, options.get("out", Config.out))
            if where is not None:
                attrs, _ = checkpoint.load(where, warn=lambda s: None, attrs_only=True)  # warned once, later
                saved = json.loads(attrs["config"])
        except (checkpoint.CheckpointError, KeyError, ValueError) as err:
            error = str(err)
    saved, error = comm.bcast((saved, error))
    if error:
        raise checkpoint.CheckpointError(error)
    if saved is None:
        return options
    for key in MUST_MATCH:
        if key in options and options[key] is not None and saved.get(key) != options[key]:
            raise checkpoint.CheckpointError(
                f"the checkpoint was made with {key} = {saved.get(key)!r}, but this run asks for "
                f"{options[key]!r}; resume with the same {key} or start a new run in another --out folder")
    known = set(Config.field_names())
    inherited = {k: v for k, v in saved.items() if k in known and k not in ("resume", "stop_after")}
    return {**inherited, **options}


def load_checkpoint(config: Config, task: Any, size: int, log: Any
                    ) -> tuple[dict[str, Any] | None, list[int] | None, str]:
    """Rank 0: the checkpoint to resume from (or None: start afresh), the session schedule, its path."""
    assert config.resume is not None
    where = checkpoint.locate(config.resume, config.out)
    if where is None:
        log(f"no checkpoint in {config.out}: starting a new run")
        return None, None, ""
    ckpt, path = checkpoint.load(where, warn=lambda s: say(s, sys.stderr))
    population = resolve_population(config, size)
    if ckpt["task"] != config.task:
        raise checkpoint.CheckpointError(f"{path} was made for task {ckpt['task']!r}, not {config.task!r}")
    if int(ckpt["population"]) != population:
        raise checkpoint.CheckpointError(f"{path} holds {ckpt['population']} members, but this run has "
                                         f"S = {population}")
    if json.loads(ckpt["space"]) != describe_space(task.space):
        raise checkpoint.CheckpointError(f"{path} was made with the space {ckpt['space']}, but the task's "
                                         f"space is now {json.dumps(describe_space(task.space))}")
    try:
        saved = json.loads(ckpt["config"])
        done = int(ckpt["next_session"])
        history = ckpt["history"]
        past = json.loads(history["json"])["epochs"] if "json" in history else [int(e) for e in history["epochs"]]
        pending = bool(ckpt["pending_selection"])
    except (KeyError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path} lacks {err} (made by another hsmpi version?)") from None
    return ckpt, schedule_after(path, config, saved, done, past, pending), path


def _rungs(epochs: int, sessions: int, growth: float, prune_at: float | None) -> float | None:
    """--prune-at where it makes rungs; None where it makes none (every session one epoch long)."""
    return prune_at if any(with_rungs(session_epochs(epochs, sessions, growth), prune_at)[1]) else None


def schedule_after(path: str, config: Config, saved: dict[str, Any], done: int, past: list[int],
                   pending: bool) -> list[int]:
    """Epochs per session for a run resumed after `done` sessions of `past` epochs (`saved`: its settings).
    With --prune-at, `done` and `past` count steps (two per session); with --plateau, `past` holds the
    epochs the sessions ran, not their shares.  Either way the schedule must stay as it was."""
    names = ("-M", "-m", "--session-growth", "--prune-at", "--plateau")
    shape = (config.epochs, config.sessions, config.session_growth, _rungs(config.epochs, config.sessions,
             config.session_growth, config.prune_at), config.plateau)
    saved_shape = (saved["epochs"], saved["sessions"], saved.get("session_growth", 1.0),
                   _rungs(saved["epochs"], saved["sessions"], saved.get("session_growth", 1.0), saved.get("prune_at")),
                   saved.get("plateau"))
    if any(v is not None for v in shape[3:] + saved_shape[3:]):
        if shape != saved_shape:
            made = ", ".join(f"{n} {v}" for n, v in zip(names, saved_shape))
            asked = ", ".join(f"{n} {v}" for n, v in zip(names, shape))
            raise checkpoint.CheckpointError(
                f"{path} was made with {made}: a run with rungs or --plateau resumes only with the same five "
                f"(this run has {asked})")
        return session_epochs(config.epochs, config.sessions, config.session_growth)
    if config.sessions == done and not pending:
        raise checkpoint.CheckpointError(
            f"{path} has {done} sessions done and its last one already copied the winner: -m must be more "
            f"than {done} (or resume with the original -m {saved['sessions']})")
    if config.sessions == done and config.epochs != sum(past):
        raise checkpoint.CheckpointError(f"{path} has all {done} sessions done: -M {config.epochs} would add "
                                         f"no epochs without more sessions; raise -m too")
    growth = config.session_growth
    if (saved["epochs"], saved["sessions"], saved.get("session_growth", 1.0)) == \
            (config.epochs, config.sessions, growth):
        return session_epochs(config.epochs, config.sessions, growth)
    if config.sessions < done or config.epochs - sum(past) < config.sessions - done:
        raise checkpoint.CheckpointError(
            f"{path} has {done} sessions ({sum(past)} epochs) done: -m must be at least {done} and "
            f"-M at least {sum(past)} + one epoch per further session")
    rest = config.sessions - done
    # the sessions still to run: the rest of M, split as --session-growth says from where the run is
    return past + (session_epochs(config.epochs - sum(past), rest, growth) if rest else [])
