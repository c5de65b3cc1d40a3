"""One population member: its model, optimizer, hyperparameters and random streams.

Every random stream a member uses (initial weights, data order, dropout) is
seeded from (run seed, member index, stream), never from the rank, so results
do not depend on how members are laid out over ranks.

Copying another member is two steps, so that the loop reads as the paper's:
`load_state` takes the donor's weights and optimizer state (step 4, share),
`set_hparams` then gives the optimizer this member's new hyperparameters and
keeps the state it holds (step 5, resample).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hsmpi.algorithm.space import HParams
from hsmpi.algorithm.streams import DATA_ORDER, TORCH_RNG, derive_seed, init_seed
from hsmpi.engine.data import Data, epoch_sum
from hsmpi.parallel import flatstate
from hsmpi.tasks import task_loss, task_metrics

STEPS = ("member", "steps")  # the header scalar that carries the schedule's position


class Member:
    """A network in training. Built by `Member.create`; all fields are plain state."""

    def __init__(self, index: int, task: Any, hp: HParams, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, data_gen: torch.Generator,
                 rng_state: torch.Tensor, cuda_rng_state: torch.Tensor | None,
                 default_batch_size: int, train_size: int | None = None, epochs: int | None = None) -> None:
        self.index = index
        self.task = task
        self.hp = hp
        self.model = model
        self.optimizer = optimizer
        self.data_gen = data_gen
        self.rng_state = rng_state
        self.cuda_rng_state = cuda_rng_state
        self.default_batch_size = default_batch_size
        # For a task's scheduler hook: the training split's size and the run's M, and the batches trained
        # so far, the schedule's position (part of the member's state: a copy takes its donor's).
        self.train_size = train_size
        self.epochs = epochs
        self.steps = 0
        self.scheduler = self._build_scheduler()
        # Optimizer state loaded from a donor whose optimizer is of another class than this member's
        # current one (a space that chooses the optimizer): kept until set_hparams builds one of that class.
        self._carried: tuple[str, flatstate.OptimizerState] | None = None

    @classmethod
    def create(cls, task: Any, index: int, hp: HParams, seed: int, device: torch.device,
               independent_init: bool = False, default_batch_size: int = 64, train_size: int | None = None,
               epochs: int | None = None) -> Member:
        """A new member with its initial weights; `train_size` and `epochs` (M) for a task's scheduler."""
        if device.type == "cpu":  # torch.manual_seed would also queue a CUDA seeding, with a costly stack trace
            torch.random.default_generator.manual_seed(init_seed(seed, index, independent_init))
        else:
            torch.manual_seed(init_seed(seed, index, independent_init))
        model = task.model().to(device)
        optimizer = task.optimizer(model.parameters(), dict(hp))
        data_gen = torch.Generator().manual_seed(derive_seed(seed, DATA_ORDER, index))
        own = torch.Generator().manual_seed(derive_seed(seed, TORCH_RNG, index))
        cuda_state = None
        if device.type == "cuda":
            cuda_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, TORCH_RNG, index))
            cuda_state = cuda_gen.get_state()
        return cls(index, task, dict(hp), model, optimizer, data_gen, own.get_state(), cuda_state,
                   default_batch_size, train_size, epochs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def batch_size(self) -> int:
        return int(self.hp.get("batch_size", self.default_batch_size))

    def _build_scheduler(self) -> Any:
        """The task's scheduler for this member's optimizer and values, moved on to `steps` (None: no hook)."""
        make = getattr(self.task, "scheduler", None)
        if make is None or self.train_size is None or self.epochs is None:
            return None
        steps_per_epoch = -(-self.train_size // self.batch_size)
        scheduler = make(self.optimizer, dict(self.hp), steps_per_epoch, self.epochs)
        if scheduler is not None and self.steps:
            with warnings.catch_warnings():  # stepping without optimizer steps is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.steps):
                    scheduler.step()
        return scheduler

    def _enter_rng(self) -> None:
        """Make torch's global generators this member's (dropout and the like)."""
        torch.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state(self.cuda_rng_state, self.device)

    def _leave_rng(self) -> None:
        self.rng_state = torch.get_rng_state()
        if self.cuda_rng_state is not None:
            self.cuda_rng_state = torch.cuda.get_rng_state(self.device)

    def train(self, data: Data, epochs: int, on_epoch: Callable[[], None] | None = None) -> float:
        """Train for `epochs`; return the mean training loss of the last epoch.

        A non-finite epoch loss stops training at once and is returned as NaN:
        the member has diverged and will not win.
        """
        self._enter_rng()
        self.model.train()
        mean = math.nan
        try:
            for _ in range(epochs):
                losses = []
                for x, y in data.shuffled(self.batch_size, self.data_gen):
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.train_step is None:
                        loss = task_loss(self.task, self.model(x), y)
                        loss.backward()
                        self.optimizer.step()
                    else:
                        loss = self.train_step(self.model, self.optimizer, (x, y), dict(self.hp))
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self.steps += 1
                    losses.append(loss.detach())  # summed once per epoch: no extra tensor operations per step
                mean = float(epoch_sum(losses, len(data), self.batch_size)) / len(data)
                if on_epoch is not None:
                    on_epoch()
                if not math.isfinite(mean):
                    return math.nan
        finally:
            self._leave_rng()
        return mean

    @property
    def train_step(self) -> Any:
        return getattr(self.task, "train_step", None)

    @torch.no_grad()
    def evaluate(self, data: Data) -> float:
        """Mean loss over the whole dataset (batch means weighted by batch size)."""
        return self.evaluate_all(data)["loss"]

    @torch.no_grad()
    def evaluate_all(self, data: Data) -> dict[str, float]:
        """The loss and the task's metrics over the whole dataset (batch means weighted by batch size)."""
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        for x, y in data.in_order():
            out = self.model(x)
            for name, value in {"loss": task_loss(self.task, out, y), **task_metrics(self.task, out, y)}.items():
                weighted = value.double() * len(x)
                totals[name] = weighted if name not in totals else totals[name] + weighted
        return {name: float(total) / len(data) for name, total in totals.items()}

    @torch.no_grad()
    def predict(self, data: Data) -> torch.Tensor:
        """The model's outputs on the whole dataset, in order."""
        self.model.eval()
        return torch.cat([self.model(x) for x, _ in data.in_order()])

    def header(self) -> flatstate.Header:
        header = flatstate.make_header(self.model, self.optimizer)
        if self.scheduler is not None:  # the schedule's position travels with the weights
            header.scalars[STEPS] = self.steps
        return header

    def pack(self, header: flatstate.Header, flat: torch.Tensor) -> None:
        flatstate.pack(self.model, self.optimizer, header, flat)

    def load_state(self, header: flatstate.Header, flat: torch.Tensor, host: torch.Tensor | None = None) -> None:
        """Take another member's weights, buffers and optimizer state from `flat` (step 4, share).

        The optimizer keeps this member's hyperparameters until `set_hparams`;
        its state tensors are this member's own copies.
        """
        flatstate.unpack_weights(header, flat, self.model)
        self.steps = int(header.scalars.get(STEPS, 0))
        state = flatstate.optimizer_state(header, flat, host)
        self._carried = None
        if header.optimizer == type(self.optimizer).__name__:
            flatstate.install_optimizer_state(self.optimizer, state)
        else:
            self.optimizer.state.clear()
            self._carried = (header.optimizer, state)

    def set_hparams(self, hp: HParams) -> None:
        """Train with `hp` from now on, keeping the weights and the optimizer state (step 5, resample).

        The optimizer is built anew from `hp` (the task maps hyperparameters to
        optimizer arguments) and takes over the state the old one held if it is
        of the same class; another class's state means nothing to it.
        """
        optimizer = self.task.optimizer(self.model.parameters(), dict(hp))
        if self._carried is not None:
            kind, state = self._carried
            if type(optimizer).__name__ == kind:
                flatstate.install_optimizer_state(optimizer, state)
        elif type(optimizer) is type(self.optimizer):
            old = [p for group in self.optimizer.param_groups for p in group["params"]]
            held = {i: self.optimizer.state[p] for i, p in enumerate(old) if p in self.optimizer.state}
            flatstate.install_optimizer_state(optimizer, held)
        self.hp = dict(hp)
        self.optimizer = optimizer
        self._carried = None
        self.scheduler = self._build_scheduler()  # this member's schedule, at the position its state holds

    def adopt(self, header: flatstate.Header, flat: torch.Tensor, hp: HParams,
              host: torch.Tensor | None = None) -> None:
        """Become a copy of the state in `flat`, training with `hp`: `load_state`, then `set_hparams`."""
        self.load_state(header, flat, host)
        self.set_hparams(hp)

    def rng_state_dict(self) -> dict[str, np.ndarray]:
        """This member's random streams (data order, torch's CPU and CUDA generators) as byte arrays."""
        state = {"data": self.data_gen.get_state().numpy(), "torch": self.rng_state.numpy()}
        if self.cuda_rng_state is not None:
            state["cuda"] = self.cuda_rng_state.cpu().numpy()
        return state

    def load_rng_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the streams saved by `rng_state_dict` (a CUDA state is ignored on the CPU)."""
        self.data_gen.set_state(torch.from_numpy(np.array(state["data"], dtype=np.uint8)))
        self.rng_state = torch.from_numpy(np.array(state["torch"], dtype=np.uint8))
        if state.get("cuda") is not None and self.cuda_rng_state is not None:
            self.cuda_rng_state = torch.from_numpy(np.array(state["cuda"], dtype=np.uint8))

    def weights(self) -> dict[str, np.ndarray]:
        """The model's state as numpy arrays (for results files)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
