"""This rank's part of the population: its members, the data they train on, where the others live.

`prepare` does what comes before the members (S, the device, the task's data)
and `create_members` builds them from their first hyperparameters, checking the
task's data and model on the way; a problem found on any rank is raised on
every rank as one SetupError.  `train` and `evaluate` are a session's first two
steps on this rank: no communication.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Subset, TensorDataset

from hsmpi.algorithm.space import HParams, SpaceError, check_hparams
from hsmpi.config import Config, layout, resolve_population
from hsmpi.engine import vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.device import pick_device, set_threads
from hsmpi.engine.member import Member
from hsmpi.errors import SetupError, agree
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import task_loss

Tick = Callable[[], None]


class Population:
    """The members one rank trains (`members`, by index in `local`), and the layout of all S of them."""

    def __init__(self, config: Config, task: Any, comm: SerialComm, size: int, device: torch.device,
                 threads: int, data: dict[str, Data], members: list[Member], log: Callable[[str], None]) -> None:
        self.config = config
        self.task = task
        self.comm = comm
        self.size = size  # S
        self.blocks = layout(size, comm.size)
        self.device = device
        self.threads = threads
        self.data = data
        self.members = members
        self.local = {m.index: m for m in members}
        self.buffer = flatstate.Buffer(device)  # reused by every state that leaves or reaches this rank
        self.log = log
        self._told: set[str] = set()  # reasons for not vectorising, said once

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
        if self.vectorized():
            return vectorize.train(self.members, self.data["train"], epochs, tick)
        return [m.train(self.data["train"], epochs, tick) for m in self.members]

    def evaluate(self, split: str, train_loss: Sequence[float]) -> list[float]:
        """Every member's mean loss on `split`; +inf for a member whose training diverged."""
        if self.vectorized():
            losses = vectorize.evaluate(self.members, self.data[split])
        else:
            losses = [m.evaluate(self.data[split]) for m in self.members]
        return [v if math.isfinite(t) else math.inf for v, t in zip(losses, train_loss)]

    def vectorized(self) -> bool:
        """Train this session's members as one batched model?  Says once (rank 0) why not, when asked for."""
        mode = self.config.vectorize
        if mode == "off" or (mode == "auto" and self.device.type != "cuda"):
            return False
        reason = vectorize.reason_not_to(self.members, self.data["train"])
        if reason and reason not in self._told:
            self._told.add(reason)
            self.log(f"vectorize: training one member at a time: {reason}")
        return reason is None


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
    data: dict[str, Data] = {}
    agree(comm, _load_data(task, config, device, data))
    return Population(config, task, comm, size, device, threads, data, [], log if comm.is_root else _quiet)


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
            data[name] = Data(ds, device)
        if config.holdout > 0:
            error = _hold_back(splits[1], config.holdout, device, data)
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


def _hold_back(val: Any, fraction: float, device: torch.device, data: dict[str, Data]) -> str | None:
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
    data["val"], data["holdout"] = Data(parts[0], device), Data(parts[1], device)
    return None


def _build_members(task: Any, config: Config, device: torch.device, data: dict[str, Data],
                   mine: dict[int, HParams], members: list[Member]) -> str | None:
    try:
        for i, hp in sorted(mine.items()):
            check_hparams(task.space, hp)
            try:
                member = Member.create(task, i, hp, config.seed, device, config.independent_init, config.batch_size)
            except Exception as err:
                return f"the task rejected member {i}'s hyperparameters {hp}: {type(err).__name__}: {err}"
            members.append(member)
        if members:
            for split in ("train", "val", "test"):
                _check_model(task, members[0], data[split], split)
    except (SetupError, SpaceError) as err:
        return str(err)
    except Exception as err:
        return f"a first forward pass of the task's model failed: {type(err).__name__}: {err}"
    return None


def _check_model(task: Any, member: Member, data: Data, split: str) -> None:
    """One forward pass on two items: the loss must be a finite scalar and shapes must match."""
    x, y = data.sample(2)
    with torch.no_grad():
        out = member.model(x)
        if getattr(task, "loss", None) is None and tuple(out.shape) != tuple(y.shape):
            raise SetupError(f"the model's output shape {tuple(out.shape)} does not match the {split} targets' "
                             f"shape {tuple(y.shape)} (mean squared error needs equal shapes)")
        loss = task_loss(task, out, y)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise SetupError(f"the task's loss must return a scalar tensor, but returned {loss!r:.80}")


class ProgressBar:
    """A live bar on stderr for one session: rank 0's member-epochs done (called once per member-epoch)."""

    WIDTH = 30

    def __init__(self, session: int, sessions: int, member_epochs: int) -> None:
        self.label = f"session {session + 1}/{sessions}"
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
