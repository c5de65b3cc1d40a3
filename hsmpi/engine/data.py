"""Datasets to batches, with the member's own data-order stream."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data.dataloader import default_collate

Batch = tuple[torch.Tensor, torch.Tensor]


class Data:
    """One split of a task's data, ready to batch on one device.

    A `TensorDataset` is moved to the device once and sliced (fast); any other
    Dataset is read item by item and collated, so tasks may stream from disk.
    """

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.length = len(dataset)  # type: ignore[arg-type]
        self.tensors: tuple[torch.Tensor, ...] | None = None
        if isinstance(dataset, TensorDataset):
            self.tensors = tuple(t.to(device) for t in dataset.tensors)

    def __len__(self) -> int:
        return self.length

    def _take(self, index: torch.Tensor) -> Batch:
        if self.tensors is not None:
            index = index.to(self.device)  # one host-to-device copy per batch, shared by inputs and targets
            return self.tensors[0][index], self.tensors[1][index]
        x, y = default_collate([self.dataset[int(i)] for i in index])
        return x.to(self.device), y.to(self.device)

    def shuffled(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Batches in an order drawn from `generator` (the member's data stream)."""
        order = torch.randperm(self.length, generator=generator)
        for start in range(0, self.length, batch_size):
            yield self._take(order[start:start + batch_size])

    def in_order(self, batch_size: int = 4096) -> Iterator[Batch]:
        """Batches in dataset order (evaluation)."""
        for start in range(0, self.length, batch_size):
            if self.tensors is not None:
                yield self.tensors[0][start:start + batch_size], self.tensors[1][start:start + batch_size]
            else:
                yield self._take(torch.arange(start, min(start + batch_size, self.length)))

    def sample(self, n: int = 2) -> Batch:
        """The first few items, for checking shapes before training."""
        return self._take(torch.arange(min(n, self.length)))


def epoch_sum(batch_losses: list[torch.Tensor], n: int, size: int) -> torch.Tensor:
    """Sum over an epoch of batch-mean losses x batch sizes (batches of `size`, the last one the rest of `n`)."""
    weights = torch.full((len(batch_losses),), float(size), dtype=torch.float64)
    weights[-1] = n - size * (len(batch_losses) - 1)
    stacked = torch.stack(batch_losses).double()  # (batches,) or (batches, members)
    weights = weights.to(stacked.device)
    return (stacked * (weights if stacked.dim() == 1 else weights[:, None])).sum(0)
