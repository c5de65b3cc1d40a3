"""One trial of a baseline: a network trained from scratch with fixed hyperparameters.

A trial is built exactly like an hsmpi member (`Member.create`): the same
shared initial weights (seeded by the run seed; with `Problem.independent_init`,
trial i's own, as hsmpi's member i gets with `--independent-init`), the same
optimizer from the task, and the data-order stream of member `index`, so the
only thing that differs between methods is how the hyperparameters are chosen.
A task's learning-rate schedule (its `scheduler` hook) spans the run's M epochs,
as an hsmpi member's does; a trial that stops early (pruned) stops partway along it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hsmpi.algorithm.space import HParams, check_hparams
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member
from hsmpi.tasks import load_task


@dataclass
class Problem:
    """A task at one seed, with its data ready on the CPU and the budget."""

    task_name: str
    seed: int
    population: int  # S: trials per baseline
    epochs: int  # M: epochs per trial
    sessions: int  # m: hsmpi's sessions
    workdir: str | None = None  # where hsmpi runs keep their output (a temporary folder when None)
    # Each trial its own initial weights (the benchmark's --trial-init independent); by default every trial
    # starts from the seed's shared weights, as the paper compares methods and as hsmpi's members do by default.
    independent_init: bool = False
    task: Any = None
    data: dict[str, Data] = field(default_factory=dict)
    # Seconds this process took to load the task's data.  A baseline's cell counts them, since hsmpi loads its
    # data inside the run it is timed on: every method's seconds are the same work, data to chosen model.
    load_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.task = load_task(self.task_name)
        cpu = torch.device("cpu")
        start = time.perf_counter()
        train, val, test = self.task.data(self.seed)
        self.data = {"train": Data(train, cpu), "val": Data(val, cpu), "test": Data(test, cpu)}
        self.load_seconds = time.perf_counter() - start

    @property
    def budget(self) -> int:
        """Total epochs every method may spend: S x M."""
        return self.population * self.epochs


@dataclass
class TrialResult:
    """What one trial gives back: its validation curve and its model's test loss."""

    index: int
    hp: HParams
    val: list[float]  # after each epoch trained (shorter when pruned or diverged)
    test: float  # the model after its last epoch
    seconds: float
    prediction: list[float] | None = None  # test-set outputs (kept for 1-D plots)

    @property
    def final_val(self) -> float:
        v = self.val[-1] if self.val else math.inf
        return v if math.isfinite(v) else math.inf


# Called after each epoch with (epoch number from 1, validation loss); True stops the trial (pruned).
Report = Callable[[int, float], bool]


def train_trial(problem: Problem, index: int, hp: HParams, epochs: int, report: Report | None = None,
                keep_prediction: bool = False) -> TrialResult:
    """Train trial `index` from the shared initial weights for up to `epochs` epochs."""
    check_hparams(problem.task.space, hp)
    start = time.perf_counter()
    # The training split's size and M, as hsmpi gives its members: a task's scheduler hook spans the same steps.
    member = Member.create(problem.task, index, hp, problem.seed, torch.device("cpu"), problem.independent_init,
                           train_size=len(problem.data["train"]), epochs=problem.epochs)
    val: list[float] = []
    for epoch in range(1, epochs + 1):
        train_loss = member.train(problem.data["train"], 1)
        loss = member.evaluate(problem.data["val"]) if math.isfinite(train_loss) else math.inf
        val.append(loss if math.isfinite(loss) else math.inf)
        if not math.isfinite(loss) or (report is not None and report(epoch, loss)):
            break
    test = member.evaluate(problem.data["test"])
    prediction = member.predict(problem.data["test"]).reshape(-1).tolist() if keep_prediction else None
    return TrialResult(index, dict(hp), val, test if math.isfinite(test) else math.inf,
                       time.perf_counter() - start, prediction)
