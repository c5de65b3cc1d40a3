"""A member's weights and optimizer state as one flat byte buffer.

The winner's state crosses the network as a single contiguous buffer with one
`Bcast`; a small header (names, dtypes, shapes, offsets and the optimizer's
non-tensor values) goes first so receivers can view into the buffer without
copies.  Bytes, not floats, so every dtype round-trips exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_ALIGN = 16  # every tensor starts on an aligned offset so dtype views are legal


@dataclass
class Entry:
    """Where one tensor lives in the buffer. `key` is ('model', name) or ('opt', param_index, name)."""

    key: tuple[Any, ...]
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    on_cpu: bool = False  # e.g. Adam's `step`, which stays on the CPU beside GPU parameters


@dataclass
class Header:
    entries: list[Entry]
    scalars: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # non-tensor optimizer state
    optimizer: str = ""
    nbytes: int = 0


def header_to_json(header: Header) -> str:
    """The header as JSON text (checkpoints store it beside the bytes)."""
    return json.dumps({
        "entries": [{"key": list(e.key), "dtype": e.dtype, "shape": list(e.shape), "offset": e.offset,
                     "nbytes": e.nbytes, "on_cpu": e.on_cpu} for e in header.entries],
        "scalars": [[list(k), v] for k, v in header.scalars.items()],
        "optimizer": header.optimizer, "nbytes": header.nbytes,
    })


def header_from_json(text: str) -> Header:
    d = json.loads(text)
    entries = [Entry(tuple(e["key"]), e["dtype"], tuple(e["shape"]), e["offset"], e["nbytes"], e["on_cpu"])
               for e in d["entries"]]
    return Header(entries, {tuple(k): v for k, v in d["scalars"]}, d["optimizer"], d["nbytes"])


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.replace("torch.", ""))
    assert isinstance(dtype, torch.dtype)
    return dtype


Key = tuple[Any, ...]


def _tensors(model: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> tuple[list[tuple[Key, torch.Tensor]], dict[Key, Any]]:
    tensors: list[tuple[Key, torch.Tensor]] = [(("model", k), v) for k, v in model.state_dict().items()]
    scalars: dict[Key, Any] = {}
    # The indexing of optimizer.state_dict() (parameters numbered across groups, those with state only),
    # read straight from the optimizer: state_dict() copies every group and runs hooks, twice per share.
    params = (p for group in optimizer.param_groups for p in group["params"])
    for index, param in enumerate(params):
        state = optimizer.state.get(param)
        if not state:
            continue
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors.append((("opt", index, name), value))
            else:
                scalars[("opt", index, name)] = value
    return tensors, scalars


def make_header(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Header:
    """The layout of this member's state (it changes once the optimizer has stepped)."""
    tensors, scalars = _tensors(model, optimizer)
    entries, offset = [], 0
    for key, t in tensors:
        nbytes = t.numel() * t.element_size()
        entries.append(Entry(key, str(t.dtype), tuple(t.shape), offset, nbytes, t.device.type == "cpu"))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return Header(entries, scalars, type(optimizer).__name__, offset)


def _view(flat: torch.Tensor, entry: Entry) -> torch.Tensor:
    return flat[entry.offset:entry.offset + entry.nbytes].view(_dtype(entry.dtype)).view(entry.shape)


# Views of a Buffer's memory per layout, kept while that memory lives: building them (three tensor calls
# each) cost more than the copies themselves for small models.  Only Buffers register (and unregister when
# they grow or go), so views never outlive or mix up memory; other tensors get fresh views each time.
_CACHES: dict[tuple[str, int], dict[tuple[Any, ...], list[torch.Tensor]]] = {}


def _place(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.data_ptr()


def views(flat: torch.Tensor, header: Header) -> list[torch.Tensor]:
    """One view of `flat` per header entry (kept when `flat` is a Buffer's memory)."""
    cache = _CACHES.get(_place(flat))
    if cache is None:
        return [_view(flat, e) for e in header.entries]
    layout = tuple((e.offset, e.nbytes, e.dtype, e.shape) for e in header.entries)
    found = cache.get(layout)
    if found is None:
        found = cache[layout] = [_view(flat, e) for e in header.entries]
    return found


def pack(model: torch.nn.Module, optimizer: torch.optim.Optimizer, header: Header, flat: torch.Tensor) -> None:
    """Copy the state into `flat` (a uint8 tensor of at least header.nbytes, on the model's device)."""
    tensors, _ = _tensors(model, optimizer)
    targets = views(flat, header)
    same = [(d, t) for d, (_, t) in zip(targets, tensors) if t.device == flat.device]
    with torch.no_grad():
        if same:
            torch._foreach_copy_([d for d, _ in same], [t for _, t in same])  # one call for the bulk
        for d, (_, t) in zip(targets, tensors):
            if t.device != flat.device:  # e.g. Adam's CPU `step` beside GPU weights
                d.copy_(t)


def unpack(
    header: Header,
    flat: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    host: torch.Tensor | None = None,
) -> None:
    """Load weights and optimizer state from `flat` into `model` and `optimizer`.

    The optimizer keeps its own param_groups (its hyperparameters), so the
    new values win over the sender's.  Another optimizer class's state means
    nothing to it and is dropped.
    """
    unpack_weights(header, flat, model)
    optimizer.state.clear()
    if header.optimizer == type(optimizer).__name__:
        install_optimizer_state(optimizer, optimizer_state(header, flat, host))


def unpack_weights(header: Header, flat: torch.Tensor, model: torch.nn.Module) -> None:
    """Copy the model's entries (parameters and buffers) from `flat` into `model`, in place."""
    sources = views(flat, header)
    weights = [(e, v) for e, v in zip(header.entries, sources) if e.key[0] == "model"]
    targets = model.state_dict()
    with torch.no_grad():
        torch._foreach_copy_([targets[e.key[1]] for e, _ in weights], [v for _, v in weights])


OptimizerState = dict[int, dict[str, Any]]  # parameter index (across groups) -> its state, as state_dict() numbers


def optimizer_state(header: Header, flat: torch.Tensor, host: torch.Tensor | None = None) -> OptimizerState:
    """The optimizer's state in `flat` as fresh tensors (a receiver's own copy: members on one rank never
    share momentum buffers), keyed by parameter index.  `host` is the same bytes on the CPU (the pinned
    host buffer), where tensors that live on the CPU (Adam's step) are read from without a device sync.
    """
    sources = views(flat, header)
    on_host = views(host, header) if host is not None and flat.device.type != "cpu" else None
    state: OptimizerState = {}
    for i, (e, v) in enumerate(zip(header.entries, sources)):
        if e.key[0] != "opt":
            continue
        # Only Adam's scalar `step` stays on the CPU beside GPU weights (whatever device the sender used).
        if e.on_cpu and flat.device.type != "cpu" and e.key[-1] == "step" and not e.shape:
            value = (on_host[i] if on_host is not None else v.cpu()).clone()
        else:
            value = v.clone()
        state.setdefault(e.key[1], {})[e.key[2]] = value
    for key, value in header.scalars.items():
        if key[0] == "opt":  # ("opt", parameter index, name); the member's own scalars are its to read
            state.setdefault(key[1], {})[key[2]] = value
    return state


def install_optimizer_state(optimizer: torch.optim.Optimizer, state: OptimizerState) -> None:
    """Give `optimizer` this state (keyed by parameter index across its groups), replacing what it had."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.state.clear()
    for index, values in state.items():
        optimizer.state[params[index]] = values


class Buffer:
    """A reusable host buffer (pinned when the state lives on a GPU) plus a device staging copy."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host: torch.Tensor = torch.empty(0, dtype=torch.uint8)
        self.staging: torch.Tensor | None = None

    def ensure(self, nbytes: int) -> None:
        """Grow (never shrink) so repeated sessions reuse the same memory."""
        if self.host.numel() >= nbytes:
            return
        self._release()
        pin = self.device.type == "cuda"
        self.host = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pin)  # zeroed: padding bytes are defined
        if pin:
            self.staging = torch.zeros(nbytes, dtype=torch.uint8, device=self.device)
        for t in (self.host, self.staging):
            if t is not None:
                _CACHES[_place(t)] = {}

    def _release(self) -> None:
        """Forget the kept views of this buffer's memory (before it grows, or when the buffer goes)."""
        for t in (self.host, self.staging):
            if t is not None and t.numel():
                _CACHES.pop(_place(t), None)

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001 - at interpreter exit the module's globals may be gone already
            pass

    def array(self, nbytes: int) -> np.ndarray:
        """The first nbytes of the host buffer as numpy, for MPI."""
        return self.host[:nbytes].numpy()

    def device_view(self) -> torch.Tensor:
        return self.staging if self.staging is not None else self.host

    def to_host(self, nbytes: int) -> None:
        if self.staging is not None:
            self.host[:nbytes].copy_(self.staging[:nbytes])

    def to_device(self, nbytes: int) -> None:
        if self.staging is not None:
            self.staging[:nbytes].copy_(self.host[:nbytes])
