"""This rank's part of the population: its members, the data they train on, where the others live.

`prepare` does what comes before the members (S, the device, the task's data)
and `create_members` builds them from their first hyperparameters, checking the
task's data and model on the way; a problem found on any rank is raised on
every rank as one SetupError.  `train` and `evaluate` are a session's first two
steps on this rank: no communication.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Subset, TensorDataset

from hsmpi.algorithm.space import HParams, SpaceError, check_hparams
from hsmpi.config import Config
from hsmpi.engine import batched, vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.device import cpu_kernels, kernels_of_ranks, mixed_kernels, pick_device, set_threads
from hsmpi.engine.member import Member
from hsmpi.errors import SetupError, agree
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm
from hsmpi.schedule import layout, resolve_population
from hsmpi.tasks import TaskError, task_loss, task_metrics, task_objective
from hsmpi.text import clean

Tick = Callable[[], None]


class Population:
    """The members one rank trains (`members`, by index in `local`), and the layout of all S of them."""

    def __init__(self, config: Config, task: Any, comm: SerialComm, size: int, device: torch.device,
                 threads: int, data: dict[str, Data], members: list[Member], log: Callable[[str], None],
                 kernels: str) -> None:
        self.config = config
        self.task = task
        self.comm = comm
        self.size = size  # S
        self.blocks = layout(size, comm.size)
        self.device = device
        self.threads = threads
        self.kernels = kernels  # the ranks' CPU kernels in a few words (hsmpi.engine.device.kernels_of_ranks)
        self.data = data
        self.members = members
        self.local = {m.index: m for m in members}
        self.buffer = flatstate.Buffer(device)  # reused by every state that leaves or reaches this rank
        self.log = log
        self._told: set[str] = set()  # reasons for not vectorising, said once
        self._batch_all = False  # `auto` on the CPU: this session's members batched (decided by all ranks)
        # The members as one batched model, kept across sessions (or why vmap cannot batch them).
        self._stack: vectorize.Stack | str | None = None
        # A checkpoint's writer in the background, which may still have to take a member's state before
        # it trains, and holds `buffer` until it has (hsmpi.engine.observers.Checkpoints).
        self.writer: Writer = NO_WRITER

    def create_members(self, mine: dict[int, HParams]) -> None:
        """Build this rank's members with their first hyperparameters and check the model on every split
        (collective: a problem on any rank is a SetupError on all)."""
        members: list[Member] = []
        agree(self.comm, _build_members(self.task, self.config, self.device, self.data, mine, members))
        self.members = members
        self.local = {m.index: m for m in members}

    @property
    def indices(self) -> list[int]:
        return [m.index for m in self.members]

    def owner(self, member: int) -> int:
        """The rank that holds `member`."""
        return next(r for r, block in enumerate(self.blocks) if member in block)

    def per_rank(self, values: Sequence[Any]) -> list[dict[int, Any]]:
        """One value per member, as the dict each rank gets (for a scatter from rank 0)."""
        return [{i: values[i] for i in block} for block in self.blocks]

    def split(self, values: dict[int, Any]) -> list[dict[int, Any]]:
        """Values for some members, as the dict each rank gets (for a scatter from rank 0)."""
        return [{i: v for i, v in values.items() if i in block} for block in self.blocks]

    # ---- steps 2 and 3 on this rank ----------------------------------------------------------------
    def train(self, epochs: int, tick: Tick | None = None) -> list[float]:
        """Train every member here for `epochs`; each one's mean training loss of its last epoch (NaN:
        diverged)."""
        if self.config.vectorize == "auto" and self.device.type == "cpu":
            self._batch_all = self._population_agrees()
        stack = self.stacked()
        if stack is not None:
            for m in self.members:
                self.writer.hold(m.index)
            return stack.train(self.data["train"], epochs, tick)
        losses = []
        for m in self.members:
            self.writer.hold(m.index)
            losses.append(m.train(self.data["train"], epochs, tick))
        return losses

    def evaluate(self, split: str, train_loss: Sequence[float]) -> list[dict[str, float]]:
        """Every member's mean loss (and the task's metrics) on `split`; for a member whose training
        diverged, an infinite loss and NaN metrics."""
        stack = self.stacked()
        if stack is not None:
            values = stack.evaluate(self.data[split])
        else:
            values = [m.evaluate_all(self.data[split]) for m in self.members]
        return [v if math.isfinite(t) else {n: math.inf if n == "loss" else math.nan for n in v}
                for v, t in zip(values, train_loss)]

    def receivers(self, indices: Sequence[int]) -> list[Any]:
        """Members here that receive one shared state (step 4): one holder that loads the first and copies
        its rows to the others where a stack holds them, else each member."""
        members = [self.local[i] for i in indices]
        if len(members) > 1 and isinstance(self._stack, vectorize.Stack) and self._stack.holds(self.members):
            return [vectorize.RowCopies(self._stack, members)]
        return members

    def stacked(self) -> vectorize.Stack | None:
        """This session's members as one batched model (None: one at a time).  Under `on`, says once
        (rank 0) why not; `auto` falls back without a word."""
        mode = self.config.vectorize
        if mode == "off" or (mode == "auto" and self.device.type == "cpu" and not self._batch_all):
            return None
        reason = batched.reason_not_to(self.members, self.data["train"])
        if reason is None and isinstance(self._stack, str):
            reason = self._stack  # vmap could not batch the model: it will not now either
        elif reason is None and not (isinstance(self._stack, vectorize.Stack) and self._stack.holds(self.members)):
            try:
                self._stack = vectorize.Stack(self.members, self.data["train"])
            except vectorize.Unbatchable as err:
                self._stack = reason = str(err)
        if reason and mode == "on" and reason not in self._told:
            self._told.add(reason)
            self.log(f"vectorize: training one member at a time: {reason}")
        return self._stack if reason is None and isinstance(self._stack, vectorize.Stack) else None

    def _population_agrees(self) -> bool:
        """`auto` on the CPU: may this session's members be batched, decided for the whole population
        (collective)?  Only MLPs (batched as matrix products), and only where every member could share
        one stack with every other, so that which members share a rank never decides which path, and
        with it which bits, a member trains with: the batched path gives a member the same bits in a
        stack of any size, but not the bits of the one-at-a-time path."""
        members = self.members
        reason = batched.reason_not_on_cpu(members, self.data["train"])
        votes = self.comm.allgather((reason is None, sorted({batched.signature(m) for m in members})))
        return all(ok for ok, _ in votes) and len({s for _, kinds in votes for s in kinds}) == 1


class Writer(Protocol):
    """What the population waits for while a checkpoint is written in the background."""

    def hold(self, member: int) -> None:
        """Return once `member` may train (the writer has taken its state)."""

    def hold_buffer(self) -> None:
        """Return once the share buffer is free again."""


class _NoWriter:
    """No checkpoint in the background: nothing to wait for."""

    def hold(self, member: int) -> None:
        pass

    def hold_buffer(self) -> None:
        pass


NO_WRITER: Writer = _NoWriter()


def prepare(config: Config, task: Any, comm: SerialComm, log: Callable[[str], None]) -> Population:
    """Everything before the members (collective): S, the device, threads, the task's data, checked."""
    error = None
    size, device = 0, torch.device("cpu")
    try:
        size = resolve_population(config, comm.size)
        device = pick_device(config.device, comm.local_rank)
    except ValueError as err:
        error = str(err)
    agree(comm, error)
    threads = set_threads(config.threads, comm.local_size)
    kernels = comm.allgather(cpu_kernels())
    mixed = mixed_kernels(kernels)
    if comm.is_root and device.type == "cpu" and mixed:
        log(f"warning: {mixed}")
    data: dict[str, Data] = {}
    agree(comm, _load_data(task, config, device, data))
    return Population(config, task, comm, size, device, threads, data, [], log if comm.is_root else _quiet,
                      kernels_of_ranks(kernels))


def _quiet(_: str) -> None:
    pass


def _load_data(task: Any, config: Config, device: torch.device, data: dict[str, Data]) -> str | None:
    """The task's three splits as Data (and the held-back part of validation), or what is wrong with them."""
    try:
        splits = task.data(config.seed)
        if not isinstance(splits, (tuple, list)) or len(splits) != 3:
            return f"the task's data() must return (train, val, test), but returned {type(splits).__name__}"
        for name, ds in zip(("train", "val", "test"), splits):
            if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
                return f"the task's {name} split is not a torch Dataset: {type(ds).__name__}"
            if len(ds) == 0:
                return f"the task's {name} split is empty"
            data[name] = Data(ds, device, config.workers)
        if config.holdout > 0:
            error = _hold_back(splits[1], config.holdout, device, data, config.workers)
            if error:
                return error
        x0, y0 = data["train"].sample(1)
        for name in ("val", "test"):
            x, y = data[name].sample(1)
            if x.shape[1:] != x0.shape[1:] or y.shape[1:] != y0.shape[1:]:
                return (f"the task's {name} split has inputs {tuple(x.shape[1:])} / targets {tuple(y.shape[1:])} "
                        f"but train has {tuple(x0.shape[1:])} / {tuple(y0.shape[1:])}")
    except Exception as err:  # a user's task: report what it raised, once
        return f"the task's data() failed: {type(err).__name__}: {err}"
    return None


def _hold_back(val: Any, fraction: float, device: torch.device, data: dict[str, Data], workers: int) -> str | None:
    """--holdout: the validation split's last part judges the returned model only, never a session."""
    n = len(val)
    held = int(round(fraction * n))
    if held < 1 or held >= n:
        return (f"holdout {fraction} of a validation split of {n} items leaves "
                f"{n - held} for selection and {held} held back; both need at least one")
    parts: tuple[Any, Any]
    if isinstance(val, TensorDataset):
        parts = (TensorDataset(*(t[:n - held] for t in val.tensors)),
                 TensorDataset(*(t[n - held:] for t in val.tensors)))
    else:
        parts = Subset(val, range(n - held)), Subset(val, range(n - held, n))
    data["val"], data["holdout"] = Data(parts[0], device, workers), Data(parts[1], device, workers)
    return None


def _build_members(task: Any, config: Config, device: torch.device, data: dict[str, Data],
                   mine: dict[int, HParams], members: list[Member]) -> str | None:
    try:
        for i, hp in sorted(mine.items()):
            check_hparams(task.space, hp)
            try:
                member = Member.create(task, i, hp, config.seed, device, config.independent_init, config.batch_size,
                                       train_size=len(data["train"]), epochs=config.epochs)
            except Exception as err:
                return f"the task rejected member {i}'s hyperparameters {hp}: {type(err).__name__}: {err}"
            members.append(member)
        if members:
            for split in ("train", "val", "test"):
                _check_model(task, members[0], data[split], split)
            _check_hooks(task, members[0], data["train"], config)
    except (SetupError, SpaceError, TaskError) as err:
        return str(err)
    except Exception as err:
        return f"a first forward pass of the task's model failed: {type(err).__name__}: {err}"
    return None


def _check_model(task: Any, member: Member, data: Data, split: str) -> None:
    """One forward pass on two items: the loss (and each metric) must be a scalar and shapes must match."""
    x, y = data.sample(2)
    with torch.no_grad():
        out = member.model(x)
        if getattr(task, "loss", None) is None and tuple(out.shape) != tuple(y.shape):
            raise SetupError(f"the model's output shape {tuple(out.shape)} does not match the {split} targets' "
                             f"shape {tuple(y.shape)} (mean squared error needs equal shapes)")
        loss = task_loss(task, out, y)
        metrics = task_metrics(task, out, y)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise SetupError(f"the task's loss must return a scalar tensor, but returned {_described(loss)}")
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and k.isidentifier() for k in metrics):
        raise SetupError(f"the task's metrics must return a dict of name -> scalar tensor, but returned "
                         f"{_described(metrics)}")
    for name, value in metrics.items():
        if name == "loss" or not isinstance(value, torch.Tensor) or value.dim() != 0:
            why = "'loss' is the loss's own name" if name == "loss" else f"returned {_described(value)}"
            raise SetupError(f"the task's metric {name!r} must be a scalar tensor of a name other than 'loss': {why}")


def _described(value: object) -> str:
    """A returned value in a few words on one line: a tensor by its shape, anything else by its repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return clean(repr(value))[:80]


def _check_hooks(task: Any, member: Member, train: Data, config: Config) -> None:
    """The objective, and one train_step and one scheduler built on a copy of the first member (which stays
    untouched): each returns what hsmpi needs, before any training."""
    objective = task_objective(task, config.objective, config.direction)
    x, y = train.sample(2)
    with torch.no_grad():
        names = set(task_metrics(task, member.model(x), y))
    if objective.name != "loss" and objective.name not in names:
        known = ", ".join(sorted({"loss"} | names))
        raise SetupError(f"the objective {objective.name!r} is not a metric the task's metrics() returns "
                         f"(known: {known})")
    if getattr(task, "train_step", None) is None and getattr(task, "scheduler", None) is None:
        return
    model = copy.deepcopy(member.model)
    optimizer = task.optimizer(model.parameters(), dict(member.hp))
    if getattr(task, "scheduler", None) is not None:
        scheduler = task.scheduler(optimizer, dict(member.hp), train.steps(member.batch_size), config.epochs)
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise SetupError(f"the task's scheduler must return a torch.optim.lr_scheduler.LRScheduler or None, "
                             f"but returned {_described(scheduler)}")
    if getattr(task, "train_step", None) is not None:
        rng = torch.get_rng_state()  # the global stream: a member trains with its own, but leave it as it was
        loss = task.train_step(model, optimizer, (x, y), dict(member.hp))
        torch.set_rng_state(rng)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise SetupError(f"the task's train_step must return the batch's loss as a scalar tensor, but "
                             f"returned {_described(loss)}")


class ProgressBar:
    """A live bar on stderr for one session: rank 0's member-epochs done (called once per member-epoch)."""

    WIDTH = 30

    def __init__(self, session: int, sessions: int, member_epochs: int, unit: str = "session") -> None:
        self.label = f"{unit} {session + 1}/{sessions}"
        self.total = member_epochs
        self.done = 0

    def __call__(self) -> None:
        self.done += 1
        filled = int(self.WIDTH * self.done / self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                         f"{self.done}/{self.total} member-epochs on rank 0")
        sys.stderr.flush()

    def close(self) -> None:
        """Clear the bar's line, so the session line that follows starts clean."""
        sys.stderr.write("\r" + " " * (len(self.label) + self.WIDTH + 40) + "\r")
        sys.stderr.flush()
