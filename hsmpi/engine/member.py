"""One population member: its model, optimizer, hyperparameters and random streams.

Every random stream a member uses (initial weights, data order, dropout) is
seeded from (run seed, member index, stream), never from the rank, so results
do not depend on how members are laid out over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hsmpi.algorithm.space import HParams
from hsmpi.engine.data import Data, epoch_sum
from hsmpi.parallel import flatstate
from hsmpi.tasks import task_loss

# Stream keys: what each seed belongs to.
INIT, DATA_ORDER, TORCH_RNG, HPARAMS, SELECTION = 1, 2, 3, 4, 5


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one stream, from the run seed and the stream's keys."""
    words = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def init_seed(seed: int, index: int, independent: bool) -> int:
    """Seed for a member's initial weights: shared by all members unless `independent`."""
    return derive_seed(seed, INIT, index) if independent else derive_seed(seed, INIT)


class Member:
    """A network in training. Built by `Member.create`; all fields are plain state."""

    def __init__(self, index: int, task: Any, hp: HParams, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, data_gen: torch.Generator,
                 rng_state: torch.Tensor, cuda_rng_state: torch.Tensor | None,
                 default_batch_size: int) -> None:
        self.index = index
        self.task = task
        self.hp = hp
        self.model = model
        self.optimizer = optimizer
        self.data_gen = data_gen
        self.rng_state = rng_state
        self.cuda_rng_state = cuda_rng_state
        self.default_batch_size = default_batch_size

    @classmethod
    def create(cls, task: Any, index: int, hp: HParams, seed: int, device: torch.device,
               independent_init: bool = False, default_batch_size: int = 64) -> Member:
        if device.type == "cpu":  # torch.manual_seed would also queue a CUDA seeding with a stack trace: 130 us
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
                   default_batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def batch_size(self) -> int:
        return int(self.hp.get("batch_size", self.default_batch_size))

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
                    loss = task_loss(self.task, self.model(x), y)
                    loss.backward()
                    self.optimizer.step()
                    losses.append(loss.detach())  # summed once per epoch: no extra tensor operations per step
                mean = float(epoch_sum(losses, len(data), self.batch_size)) / len(data)
                if on_epoch is not None:
                    on_epoch()
                if not math.isfinite(mean):
                    return math.nan
        finally:
            self._leave_rng()
        return mean

    @torch.no_grad()
    def evaluate(self, data: Data) -> float:
        """Mean loss over the whole dataset (batch means weighted by batch size)."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, y in data.in_order():
            total += task_loss(self.task, self.model(x), y).double() * len(x)
        return float(total) / len(data)

    @torch.no_grad()
    def predict(self, data: Data) -> torch.Tensor:
        """The model's outputs on the whole dataset, in order."""
        self.model.eval()
        return torch.cat([self.model(x) for x, _ in data.in_order()])

    def header(self) -> flatstate.Header:
        return flatstate.make_header(self.model, self.optimizer)

    def pack(self, header: flatstate.Header, flat: torch.Tensor) -> None:
        flatstate.pack(self.model, self.optimizer, header, flat)

    def adopt(self, header: flatstate.Header, flat: torch.Tensor, hp: HParams,
              host: torch.Tensor | None = None) -> None:
        """Become a copy of another member's state, with hyperparameters `hp`.

        The optimizer is rebuilt from `hp` first and keeps those values when
        the donor's state is loaded (a plain load_state_dict would restore the
        donor's learning rate).
        """
        self.hp = dict(hp)
        self.optimizer = self.task.optimizer(self.model.parameters(), dict(hp))
        flatstate.unpack(header, flat, self.model, self.optimizer, host)

    def weights(self) -> dict[str, np.ndarray]:
        """The model's state as numpy arrays (for results files)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
