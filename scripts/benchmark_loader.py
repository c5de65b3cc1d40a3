"""hsmpi's training epoch on a map-style Dataset against a plain DataLoader loop, in one process.

    python scripts/benchmark_loader.py                       # 1 worker, 9 alternated pairs
    python scripts/benchmark_loader.py --workers 0 2 --repeats 7

The Dataset builds each item in `__getitem__` (a 3x16x16 image drawn from the
item's own seed, as one read and decoded from disk would be).  Both sides
train the same small CNN with SGD for one epoch at batch size 64 with the same
torch threads and DataLoader workers (kept alive): hsmpi through a Member and
its Data (the member's own batch order handed to the loader), the plain loop
through `DataLoader(shuffle=True, persistent_workers=True)`.  Pairs alternate
and the median of their ratios is printed: this machine's cores drift, so a
ratio of one run is what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hsmpi.algorithm.space import LogUniform
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member


class Built(Dataset):
    """Items made on request: a 3x16x16 image and a class, from the item's own seed."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(i)
        image = rng.standard_normal((3, 16, 16)).astype(np.float32)
        return torch.from_numpy(image), torch.tensor(int(rng.integers(10)))


class Task:
    space = {"lr": LogUniform(1e-3, 1e-1)}

    def data(self, seed: int) -> Any:
        raise NotImplementedError

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10))

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=0.9)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)


def hsmpi_epoch(task: Task, data: Data) -> float:
    member = Member.create(task, 0, {"lr": 0.01}, 0, torch.device("cpu"))
    start = time.perf_counter()
    member.train(data, 1)
    return time.perf_counter() - start


def plain_epoch(task: Task, loader: DataLoader) -> float:
    torch.random.default_generator.manual_seed(0)
    model = task.model()
    optimizer = task.optimizer(model.parameters(), {"lr": 0.01})
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(x), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=4096)
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task, dataset = Task(), Built(args.items)
    print(f"benchmark_loader: {args.items} items built in __getitem__, batch 64, a small CNN, SGD, "
          f"{args.threads} torch thread(s), torch {torch.__version__}, median of {args.repeats} alternated pairs\n")
    print("| workers | hsmpi epoch (s) | plain DataLoader epoch (s) | hsmpi / plain |")
    print("|---|---|---|---|")
    for workers in args.workers:
        data = Data(dataset, torch.device("cpu"), workers)
        loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
        hsmpi_epoch(task, data), plain_epoch(task, loader)  # warm-up: the workers start, torch's first optimizer
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(hsmpi_epoch(task, data))
            theirs.append(plain_epoch(task, loader))
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        print(f"| {workers} | {statistics.median(ours):.3f} | {statistics.median(theirs):.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
