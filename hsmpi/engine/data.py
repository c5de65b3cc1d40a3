"""Datasets to batches, with the member's own data-order stream.

A `TensorDataset` is moved to the device once and sliced (fast).  Any other
map-style Dataset (one that reads or builds each item in `__getitem__`, like
files on disk) goes through one `torch.utils.data.DataLoader` per split, with
`workers` worker processes kept alive across epochs, sessions and members
(`persistent_workers`) and pinned host memory on CUDA.  Either way the order
of the items is the member's own: `shuffled` draws it from the member's data
generator and hands the loader those exact batches, so the layout and a
resume never change which member sees which batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torch.utils.data.dataloader import default_collate

Batch = tuple[torch.Tensor, torch.Tensor]


class _Batches(Sampler[list[int]]):
    """The batches the loader yields next, set before each pass: the loader's workers stay, the order is ours."""

    def __init__(self) -> None:
        self.batches: Sequence[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Data:
    """One split of a task's data, ready to batch on one device."""

    def __init__(self, dataset: Dataset, device: torch.device, workers: int = 0) -> None:
        self.dataset = dataset
        self.device = device
        self.length = len(dataset)  # type: ignore[arg-type]
        self.tensors: tuple[torch.Tensor, ...] | None = None
        self.workers = workers
        self._loader: DataLoader | None = None
        self._batches = _Batches()
        if isinstance(dataset, TensorDataset):
            self.tensors = tuple(t.to(device) for t in dataset.tensors)

    def __len__(self) -> int:
        return self.length

    def _loaded(self, batches: Sequence[list[int]]) -> Iterator[Batch]:
        """The items of `batches`, collated, on the device (through the DataLoader for a map-style Dataset)."""
        if self._loader is None:
            # Its own generator: a loader draws a seed for its workers at every pass, and from torch's global
            # generator that would be the member's dropout stream (training runs with it).
            self._loader = DataLoader(self.dataset, batch_sampler=self._batches, num_workers=self.workers,
                                      persistent_workers=self.workers > 0, collate_fn=default_collate,
                                      pin_memory=self.device.type == "cuda", generator=torch.Generator())
        self._batches.batches = batches
        for x, y in self._loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _take(self, index: torch.Tensor) -> Batch:
        if self.tensors is not None:
            index = index.to(self.device)  # one host-to-device copy per batch, shared by inputs and targets
            return self.tensors[0][index], self.tensors[1][index]
        x, y = default_collate([self.dataset[int(i)] for i in index])
        return x.to(self.device), y.to(self.device)

    def shuffled(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Batches in an order drawn from `generator` (the member's data stream)."""
        order = torch.randperm(self.length, generator=generator)
        if self.tensors is None:
            yield from self._loaded([b.tolist() for b in order.split(batch_size)])
            return
        for start in range(0, self.length, batch_size):
            yield self._take(order[start:start + batch_size])

    def in_order(self, batch_size: int = 4096) -> Iterator[Batch]:
        """Batches in dataset order (evaluation)."""
        if self.tensors is None:
            yield from self._loaded([list(range(s, min(s + batch_size, self.length)))
                                     for s in range(0, self.length, batch_size)])
            return
        for start in range(0, self.length, batch_size):
            yield self.tensors[0][start:start + batch_size], self.tensors[1][start:start + batch_size]

    def sample(self, n: int = 2) -> Batch:
        """The first few items, for checking shapes before training."""
        return self._take(torch.arange(min(n, self.length)))

    def steps(self, batch_size: int) -> int:
        """Batches per epoch at this batch size (the last one holds the rest)."""
        return -(-self.length // batch_size)


def epoch_sum(batch_losses: list[torch.Tensor], n: int, size: int) -> torch.Tensor:
    """Sum over an epoch of batch-mean losses x batch sizes (batches of `size`, the last one the rest of `n`)."""
    weights = torch.full((len(batch_losses),), float(size), dtype=torch.float64)
    weights[-1] = n - size * (len(batch_losses) - 1)
    stacked = torch.stack(batch_losses).double()  # (batches,) or (batches, members)
    weights = weights.to(stacked.device)
    return (stacked * (weights if stacked.dim() == 1 else weights[:, None])).sum(0)
