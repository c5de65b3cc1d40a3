"""The one way a member's state moves between ranks: `share_state`.

Selection (a donor to the members that copy it), resume (a stored state to
the members that hold it) and finish (the returned model to every rank) all
use it: the rank holding the state sends its header (a small pickled
message) and then its bytes as one contiguous buffer with one `Bcast`; every
receiver on every rank loads it.  A state either lives in a member (`Holder`)
or is kept as bytes (`Saved`: the best so far, kept by the rank that owns
that member, or one read from a checkpoint).  Only the header travels by
pickle; the bytes always go as one buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm


class Holder(Protocol):
    """What can send or receive a state: a population member."""

    def header(self) -> flatstate.Header: ...

    def pack(self, header: flatstate.Header, flat: torch.Tensor) -> None: ...

    def load_state(self, header: flatstate.Header, flat: torch.Tensor, host: torch.Tensor | None) -> None: ...


@dataclass
class Saved:
    """A state as bytes on the host, with the header that says how to read them."""

    header: flatstate.Header
    data: np.ndarray  # uint8, header.nbytes long

    @classmethod
    def of(cls, holder: Holder, buffer: flatstate.Buffer) -> Saved:
        """A copy of `holder`'s state, packed through `buffer`."""
        header = holder.header()
        return cls(header, _pack(holder, header, buffer).copy())


def as_bytes(source: Holder | Saved, buffer: flatstate.Buffer,
             header: flatstate.Header | None = None) -> tuple[flatstate.Header, np.ndarray]:
    """`source`'s header and bytes on the host: a Saved's own array, or a member's state packed into
    `buffer` (valid until the buffer is used again; `header`: the member's, when known already)."""
    if isinstance(source, Saved):
        return source.header, source.data
    header = header or source.header()
    return header, _pack(source, header, buffer)


def load_saved(buffer: flatstate.Buffer, saved: Saved, receivers: Sequence[Holder]) -> None:
    """Every one of `receivers` (on this rank) loads the state `saved`, through `buffer`."""
    buffer.ensure(saved.header.nbytes)
    buffer.array(saved.header.nbytes)[:] = saved.data
    _deliver(buffer, saved.header, receivers)


def _deliver(buffer: flatstate.Buffer, header: flatstate.Header, receivers: Sequence[Holder]) -> None:
    """The state in `buffer`'s host memory to its device copy, and into each receiver."""
    buffer.to_device(header.nbytes)
    for receiver in receivers:
        receiver.load_state(header, buffer.device_view(), buffer.host)


def _pack(holder: Holder, header: flatstate.Header, buffer: flatstate.Buffer) -> np.ndarray:
    buffer.ensure(header.nbytes)
    holder.pack(header, buffer.device_view())
    buffer.to_host(header.nbytes)
    return buffer.array(header.nbytes)


def share_state(comm: SerialComm, buffer: flatstate.Buffer, root: int, source: Holder | Saved | None,
                receivers: Sequence[Holder], keep_on: int | None = None) -> Saved | None:
    """Send the state that rank `root` holds (`source`, ignored elsewhere) to every rank (collective).

    Each rank's `receivers` load it.  Rank `keep_on` returns a copy of the
    bytes (to keep as the best so far); every other rank None.
    """
    header = None
    if comm.rank == root:
        assert source is not None
        header = source.header if isinstance(source, Saved) else source.header()
    header = comm.bcast(header, root=root)
    buffer.ensure(header.nbytes)
    array = buffer.array(header.nbytes)
    if comm.rank == root:
        if isinstance(source, Saved):
            array[:] = source.data
        else:
            assert source is not None
            _pack(source, header, buffer)
    comm.bcast_buffer(array, root=root)
    _deliver(buffer, header, receivers)
    return Saved(header, array.copy()) if comm.rank == keep_on else None
