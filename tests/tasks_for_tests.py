"""Small tasks for the tests: fast, and some deliberately broken."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hsmpi import Choice, IntUniform, LogUniform, Uniform


def mpi_rank() -> int:
    """This process's rank in COMM_WORLD, asked of MPI itself (any MPI; 0 without one)."""
    try:
        from mpi4py import MPI
    except ImportError:
        return 0
    return int(MPI.COMM_WORLD.Get_rank())


def _data(seed: int, n: int = 64, features: int = 3) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    def split(m: int) -> TensorDataset:
        x = torch.randn(m, features, generator=g)
        y = (x.sum(1, keepdim=True) ** 2) / features + 0.1 * torch.randn(m, 1, generator=g)
        return TensorDataset(x, y)
    return split(n), split(n // 2), split(n // 2)


class Tiny:
    """A 3-16-1 MLP with dropout on 64 samples; every parameter type, including batch_size."""

    space = {
        "lr": LogUniform(1e-3, 1e-1),
        "momentum": Uniform(0.0, 0.95),
        "batch_size": Choice([8, 16, 32]),
        "nesterov": Choice(["no", "yes"]),
        "width_unused": IntUniform(1, 4),
    }

    def data(self, seed: int) -> Any:
        return _data(seed)

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                   torch.nn.Linear(16, 1))

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        nesterov = hp["nesterov"] == "yes" and hp["momentum"] > 0
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], nesterov=nesterov)


class TinyAdam(Tiny):
    space = {"lr": LogUniform(1e-3, 1e-1), "beta1": Uniform(0.5, 0.95)}

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], 0.999))


class PlantedFailure(TinyAdam):
    """Raises during training on MPI rank 2 only."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if mpi_rank() == 2 and torch.is_grad_enabled():
            raise RuntimeError("planted failure on rank 2")
        return torch.nn.functional.mse_loss(output, target)


class NaNSGD(torch.optim.SGD):
    """SGD that turns the weights into NaN once its learning rate is above `limit`: a sure divergence."""

    limit = 0.05

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        out = super().step(closure)
        for group in self.param_groups:
            if group["lr"] > self.limit:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return out


class Diverging(TinyAdam):
    """Members with lr above 0.05 blow up to NaN."""

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        return NaNSGD(params, lr=hp["lr"])


class AllDiverge(TinyAdam):
    """Every member blows up in the first session."""

    def optimizer(self, params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
        opt = NaNSGD(params, lr=hp["lr"])
        opt.limit = 0.0
        return opt


class BadSpace(TinyAdam):
    @property
    def space(self) -> Any:  # type: ignore[override]
        return {"lr": LogUniform(0.0, 1.0)}  # built on use, so importing this file works


class WrongOutput(TinyAdam):
    def model(self) -> torch.nn.Module:
        return torch.nn.Linear(3, 2)


class EmptyData(TinyAdam):
    def data(self, seed: int) -> Any:
        train, val, test = _data(seed)
        return train, TensorDataset(torch.zeros(0, 3), torch.zeros(0, 1)), test


class RejectsHparams(TinyAdam):
    space = {"lr": Uniform(-1.0, -0.5), "beta1": Uniform(0.5, 0.95)}


class NoModel:
    space = {"lr": LogUniform(1e-3, 1e-1)}

    def data(self, seed: int) -> Any:
        return _data(seed)


class Slow(TinyAdam):
    """TinyAdam whose training steps sleep, so a test can act while a session is in flight."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            import time

            time.sleep(0.01)
        return torch.nn.functional.mse_loss(output, target)


SLOW_DATA_SECONDS = 0.5


class SlowData(TinyAdam):
    """TinyAdam whose data takes SLOW_DATA_SECONDS to load, so a test can see who is charged for it."""

    def data(self, seed: int) -> Any:
        import time

        time.sleep(SLOW_DATA_SECONDS)
        return _data(seed)


class MismatchedSplits(TinyAdam):
    """Validation inputs with 4 features where training has 3."""

    def data(self, seed: int) -> Any:
        train, _, test = _data(seed)
        return train, TensorDataset(torch.zeros(8, 4), torch.zeros(8, 1)), test


class FailsOnRank1(TinyAdam):
    """Cannot be built on rank 1 (as when one node lacks a file or module)."""

    def __init__(self) -> None:
        if mpi_rank() == 1:
            raise FileNotFoundError("/data/only-on-node-0.npz")


class SignalsItself(TinyAdam):
    """Sends `signum` to its own process at its first training step, on MPI rank `rank` only."""

    def __init__(self, signum: int = signal.SIGUSR1, rank: int = 0) -> None:
        self.signum, self.rank, self.sent = signum, rank, False

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not self.sent and mpi_rank() == self.rank:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return torch.nn.functional.mse_loss(output, target)


class Scheduled(TinyAdam):
    """TinyAdam with a step-decay schedule whose rate is a hyperparameter: lr x gamma every 3 batches."""

    space = {"lr": LogUniform(1e-3, 1e-1), "beta1": Uniform(0.5, 0.95), "gamma": Uniform(0.5, 0.99)}

    def scheduler(self, optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=hp["gamma"])


class OwnStep(TinyAdam):
    """TinyAdam whose train_step clips gradients and counts its calls."""

    calls = 0

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
                   hp: dict[str, Any]) -> torch.Tensor:
        type(self).calls += 1
        x, y = batch
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        return loss


class NegLoss(TinyAdam):
    """TinyAdam judged by a metric that is minus its loss, maximised: it must choose exactly as the loss does."""

    objective = "negloss"
    direction = "maximize"

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"negloss": -torch.nn.functional.mse_loss(output, target), "mae": (output - target).abs().mean()}


class Coarse(NegLoss):
    """A maximised metric that ties often: the share of validation targets within 1.0 of the prediction
    (32 samples, so a few values for 8 members), and the loss the members differ on."""

    objective = "within"

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"within": ((output - target).abs() < 1.0).float().mean()}


class NaNMetric(NegLoss):
    """A maximised objective that is NaN for any member whose outputs average above zero on a batch."""

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        value = -torch.nn.functional.mse_loss(output, target)
        return {"negloss": torch.where(output.mean() > 0, torch.tensor(float("nan")), value)}


class ItemData(TinyAdam):
    """TinyAdam's data as a map-style Dataset (items made in __getitem__), so it goes through the DataLoader."""

    def data(self, seed: int) -> Any:
        return tuple(Items(split) for split in _data(seed))


class Items(torch.utils.data.Dataset):
    def __init__(self, tensors: TensorDataset) -> None:
        self.x, self.y = tensors.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i].clone(), self.y[i].clone()


class WithBatchNorm(TinyAdam):
    """A model with BatchNorm: its running statistics travel with the weights."""

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 1))


class StepReturnsFloat(TinyAdam):
    def train_step(self, model: Any, optimizer: Any, batch: Any, hp: Any) -> Any:
        return 0.5


class StepReturnsVector(TinyAdam):
    def train_step(self, model: Any, optimizer: Any, batch: Any, hp: Any) -> Any:
        x, y = batch
        return (model(x) - y) ** 2


class SchedulerNotOne(TinyAdam):
    def scheduler(self, optimizer: Any, hp: Any, steps_per_epoch: int, epochs: int) -> Any:
        return "cosine"


class UnknownObjective(TinyAdam):
    objective = "accuracy"


class BadDirection(TinyAdam):
    direction = "upwards"


class MetricNotScalar(TinyAdam):
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"err": (output - target).abs()}


class _Thresholded(torch.nn.Module):
    """A layer whose forward reads a value back to Python: vmap cannot batch it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if float(out.mean()) > -1e9 else -out


class ItemModel(TinyAdam):
    """Trains one member at a time under --vectorize on: its model's forward calls float() on a tensor."""

    def model(self) -> torch.nn.Module:
        return _Thresholded()
