"""`python -m hsmpi replay RESULTS`: retrain one network with the winners' hyperparameter schedule.

Session k of the replay trains for the epochs session k had, with the
hyperparameters that session's winner trained with (the schedule the winning
lineage followed), starting from the run's initial weights and carrying the
optimizer state across sessions as hsmpi does.  It reports the replayed
network's validation and test loss beside the search's: a user's way to reuse
what the search learned without searching again.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import h5py
import torch

from hsmpi.algorithm.space import HParams
from hsmpi.engine import vectorize
from hsmpi.engine.batched import CPU_BATCHING, reason_not_on_cpu
from hsmpi.engine.data import Data
from hsmpi.engine.history import typed_value
from hsmpi.engine.member import Member
from hsmpi.tasks import load_task
from hsmpi.text import say


def schedule(path: str) -> tuple[dict[str, Any], list[tuple[int, HParams]], float, int]:
    """(settings, [(epochs, winner's hyperparameters) per session], the search's best test loss, first winner)."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["config"])
        task = load_task(config["task"])
        h = f["history"]
        winners, epochs = h["winner"][()], h["epochs"][()]
        names = list(h["hparams"])
        steps = [(int(epochs[k]), {n: typed_value(task.space, n, h[f"hparams/{n}"][k, w]) for n in names})
                 for k, w in enumerate(winners)]
        best = float(f["test/best_loss"][()])
    return config, steps, best, int(winners[0])


def _batched_sessions(path: str, config: dict[str, Any], member: Member, train: Data) -> list[bool]:
    """The sessions the run trained as a batched model, as `--vectorize auto` decides on the CPU: a stack
    of one gives the replayed member the bits a stack of any size gave it in the run.  (A space whose
    values choose the optimizer or the model's shapes can have made the run decide otherwise in a
    session; its replay then differs from the run by rounding.)"""
    with h5py.File(path, "r") as f:
        rule, run_device = f.attrs.get("cpu_batching", ""), f.attrs.get("device_type", "")
        sizes = f["history/hparams/batch_size"][()] if "batch_size" in f["history/hparams"] else None
        sessions = len(f["history/winner"])
    if (rule != CPU_BATCHING or run_device != "cpu" or member.device.type != "cpu"
            or config.get("vectorize", "auto") == "off" or reason_not_on_cpu([member], train) is not None):
        return [False] * sessions
    if sizes is None:
        return [True] * sessions
    return [len(set(row.tolist())) == 1 for row in sizes]


def replay(path: str, device: str = "cpu", log: Any = say) -> float:
    """Retrain and return the replayed network's test loss."""
    config, steps, best, first = schedule(path)
    task = load_task(config["task"])
    dev = torch.device(device)
    train, val, test = (Data(d, dev, config.get("workers", 0)) for d in task.data(config["seed"]))
    # The first winner's index: its initial weights and data order, so session 1 is the search's own.
    member = Member.create(task, first, steps[0][1], config["seed"], dev, config["independent_init"],
                           config["batch_size"], train_size=len(train), epochs=sum(e for e, _ in steps))
    log(f"replaying {len(steps)} sessions of {config['task']} from {path}")
    batched = _batched_sessions(path, config, member, train)
    for k, (epochs, hp) in enumerate(steps):
        if k:  # new hyperparameters, same weights and optimizer state
            member.set_hparams(hp)
        if batched[k]:
            vectorize.train([member], train, epochs)
        else:
            member.train(train, epochs)
        shown = ", ".join(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v}" for n, v in hp.items())
        log(f"session {k + 1}/{len(steps)} | {epochs} epochs | {shown} | val {member.evaluate(val):.5g}")
    loss = member.evaluate(test)
    log(f"replayed network: test loss {loss:.5g} | the search's best member: {best:.5g}")
    return loss


def main(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hsmpi replay", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a results.h5 written by hsmpi")
    p.add_argument("--device", default="cpu")
    try:
        ns = p.parse_args(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        replay(ns.results, ns.device)
    except (OSError, KeyError, ValueError) as err:
        say(f"hsmpi: error: cannot replay {ns.results}: {err}", sys.stderr)
        return 2
    return 0


__all__ = ["replay", "schedule"]
