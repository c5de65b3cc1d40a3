"""The batched path's parts that are not the stack: which members it takes, dropout masks, the direct path.

`reason_not_to` says why a rank's members cannot be trained as one batched
model (None when they can).  `Masks` gives every member its own dropout
masks from a counter-based hash of the member's key of the epoch, the step
and the layer, so a member's masks do not depend on which members share its
rank.  `direct_layers` recognises a Sequential of Linear layers, elementwise
activations, Flatten and Dropout, which `direct_forward` runs for all members
at once as batched matrix products, without `vmap`; `template_of` is the copy
of a model that `functional_call` runs under `vmap` for anything else.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import Any

import torch

from hsmpi.engine.data import Data
from hsmpi.engine.member import Member

# What `--vectorize auto` batches on the CPU, as results files record it (`cpu_batching`): MLPs, in the
# sessions where every member of the population could share one stack.  A file without it was written
# when `auto` trained one member at a time on the CPU.  `python -m hsmpi replay` follows it.
CPU_BATCHING = "mlp-population"

SUPPORTED = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}  # batched optimizers
UNBATCHED_FLAGS = ("maximize", "amsgrad", "differentiable", "capturable")  # optimizer settings not batched

# Dropout kinds with their mask's shape: elementwise, or one draw per channel (the dims after batch, channel).
DROPOUTS = {torch.nn.Dropout: 0, torch.nn.Dropout1d: 1, torch.nn.Dropout2d: 2, torch.nn.Dropout3d: 3}
_M32 = 0xFFFFFFFF


def reason_not_to(members: list[Member], data: Data) -> str | None:
    """Why these members cannot be trained as one batched model (None: they can, as far as can be told
    without running the model; `Stack` tries one batched step and raises `Unbatchable` if it fails)."""
    model, opt, task = members[0].model, members[0].optimizer, members[0].task
    if len(members) < 2 and (members[0].device.type != "cpu" or direct_layers(model) is None):
        # On the CPU a stack of one MLP gives each member the same bits as a stack of several (one member
        # per rank is then a layout like any other); elsewhere one member trains faster as it is.
        return "one member on this rank"
    if getattr(task, "train_step", None) is not None:
        return "the task has its own train_step"
    if data.tensors is None:
        return "the training data is not a TensorDataset"
    other = next((type(m).__name__ for m in model.modules()
                  if isinstance(m, torch.nn.modules.dropout._DropoutNd) and type(m) not in DROPOUTS), None)
    if other is not None:
        return f"the model uses {other}; Dropout and Dropout1d/2d/3d are batched"
    kinds = {type(m.optimizer) for m in members}
    if len(kinds) != 1 or type(opt) not in SUPPORTED:
        return f"the optimizer is {', '.join(sorted(k.__name__ for k in kinds))}; SGD, Adam and AdamW are batched"
    params = list(model.parameters())
    if not params or not all(p.requires_grad for p in params):
        return "some of the model's parameters are frozen (requires_grad=False)"
    if len({p.dtype for p in params}) != 1:
        return "the model's parameters have several dtypes"
    shapes = _shapes(model)
    for m in members:
        if _shapes(m.model) != shapes:
            return ("members' models differ in their parameters, buffers, dropout or normalisation settings "
                    "(a hyperparameter shapes the model)")
        if len(m.optimizer.param_groups) != 1:
            return "the optimizer has several parameter groups"
        if [id(p) for p in m.optimizer.param_groups[0]["params"]] != [id(p) for p in m.model.parameters()]:
            return "the optimizer does not train exactly the model's parameters, in order"
        g = m.optimizer.param_groups[0]
        if any(g.get(flag) for flag in UNBATCHED_FLAGS):
            return "the optimizer uses maximize, amsgrad, differentiable or capturable"
        if len({bool(x.optimizer.param_groups[0].get("decoupled_weight_decay")) for x in members}) != 1:
            return "members mix Adam with and without decoupled weight decay"
    if len({m.batch_size for m in members}) != 1:
        return "members have different batch sizes this session"
    return None


def reason_not_on_cpu(members: list[Member], data: Data) -> str | None:
    """Why `--vectorize auto` does not batch these members on the CPU (None: it may, where the whole
    population agrees, see `signature`): only MLPs, which run as batched matrix products."""
    if direct_layers(members[0].model) is None:
        return "not an MLP"
    return reason_not_to(members, data)


def signature(member: Member) -> int:
    """What `reason_not_to` compares between members, as one number: members with the same signature can
    share a stack (on any rank)."""
    g = member.optimizer.param_groups
    flags = [bool(g[0].get(k)) for k in (*UNBATCHED_FLAGS, "decoupled_weight_decay")]
    return zlib.crc32(repr((member.batch_size, type(member.optimizer).__name__, len(g), flags,
                            _shapes(member.model))).encode())


def _shapes(model: torch.nn.Module) -> list[tuple[Any, ...]]:
    """What the batched forward takes from the first member for all: the shapes of parameters and buffers,
    and the settings of dropout and normalisation layers."""
    entries = list(model.named_parameters()) + list(model.named_buffers())
    settings = [(n, type(m).__name__, getattr(m, "p", None), getattr(m, "momentum", None), getattr(m, "eps", None))
                for n, m in model.named_modules()
                if isinstance(m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._NormBase))]
    return [(n, tuple(t.shape), t.dtype) for n, t in entries] + settings


def mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds), in int64 so that no step overflows the sign."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


class Masks:
    """Dropout masks for every member at once, from each member's key of this epoch and the step.

    Inside the batched forward `key` is the member's own key (a batched scalar under `vmap`); each
    dropout call in the forward takes the next layer number, so every layer, step and epoch draws anew.
    """

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.step = 0
        self.layer = 0

    def uniform(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Uniform [0, 1) draws of `shape` (one member's) for each member, this layer and step (float32,
        24 bits).  The key is one member's under `vmap`, or all K members' (K,), giving (K, *shape)."""
        assert self.key is not None
        self.layer += 1
        salt = (self.step * 0x9E3779B1 + self.layer * 0x85EBCA77) & _M32
        index = torch.arange(math.prod(shape), device=device, dtype=torch.int64).view(shape)
        key = self.key.view(-1, *([1] * len(shape))) if self.key.dim() == 1 else self.key
        seed = mix(mix((key & _M32) ^ salt) ^ ((key >> 32) & _M32))  # one number per member: cheap
        bits = mix(((index * 0x9E3779B1) & _M32) ^ seed)  # one round per element
        return (bits >> 8).to(torch.float32) * 2.0**-24

    def dropout(self, module: torch.nn.modules.dropout._DropoutNd, x: torch.Tensor) -> torch.Tensor:
        """`module`'s dropout of `x` with each member's own mask: one member's `x` under `vmap`, or all
        members' (K, ...) with the key of all K."""
        p = float(module.p)
        if not module.training or p == 0.0 or self.key is None:
            return x
        lead = self.key.dim()  # the members' dimension in front, outside vmap
        one = x.shape[lead:]
        channel_dims = DROPOUTS[type(module)]
        if channel_dims == 0:
            shape = one
        else:  # one draw per (sample, channel), or per channel for an input without a batch dimension
            kept = 2 if len(one) == channel_dims + 2 else 1
            shape = torch.Size(tuple(one[:kept]) + (1,) * (len(one) - kept))
        keep = (self.uniform(shape, x.device) >= p).to(x.dtype)
        return x * keep / (1.0 - p) if p < 1.0 else x * 0.0


ELEMENTWISE = (torch.nn.Identity, torch.nn.Tanh, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.GELU,
               torch.nn.SiLU, torch.nn.Mish, torch.nn.Sigmoid, torch.nn.ELU, torch.nn.CELU, torch.nn.SELU,
               torch.nn.Softplus, torch.nn.Softsign, torch.nn.Hardtanh, torch.nn.Hardswish, torch.nn.Hardsigmoid,
               torch.nn.Tanhshrink)


def direct_layers(model: torch.nn.Module, prefix: str = "") -> list[tuple[str, torch.nn.Module]] | None:
    """The model as (name, layer) in order if it is a Sequential of Linear layers, elementwise activations,
    Flatten and Dropout (nested Sequentials too), which run batched as they are; None otherwise (vmap)."""
    if type(model) is not torch.nn.Sequential:
        return None
    layers: list[tuple[str, torch.nn.Module]] = []
    for name, child in model.named_children():
        if type(child) is torch.nn.Sequential:
            inner = direct_layers(child, f"{prefix}{name}.")
            if inner is None:
                return None
            layers += inner
        elif type(child) in (torch.nn.Linear, torch.nn.Flatten, torch.nn.Dropout) or type(child) in ELEMENTWISE:
            layers.append((f"{prefix}{name}.", child))
        else:
            return None
    return layers


def direct_forward(layers: list[tuple[str, torch.nn.Module]], params: dict[str, torch.Tensor], x: torch.Tensor,
            masks: Masks) -> torch.Tensor:
    """All members' outputs (K, ...) from their inputs (K, ...): Linear as batched matrix products with
    the bias added in the same kernel, the rest as the layers themselves on the stacked tensor."""
    h = x
    for prefix, layer in layers:
        if isinstance(layer, torch.nn.Linear):
            weight, bias = params[prefix + "weight"], params.get(prefix + "bias")
            flat = h.reshape(h.shape[0], -1, h.shape[-1])
            # torch multiplies a single matrix by a vector with another kernel than a batch of them, whose
            # last bits differ: a stack of one member computes that layer as a batch of two equal ones
            # (views; autograd adds the second's zero gradient), so it gets the bits a larger stack gives it.
            single = flat.shape[0] == 1 and 1 in weight.shape[1:]
            if single:
                flat, weight = flat.expand(2, -1, -1), weight.expand(2, -1, -1)
                bias = None if bias is None else bias.expand(2, -1)
            out = (torch.bmm(flat, weight.transpose(1, 2)) if bias is None
                   else torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)))
            if single:
                out = out[:1]
            h = out.view(*h.shape[:-1], weight.shape[1])
        elif isinstance(layer, torch.nn.Flatten):  # its dims are one member's: one more in front
            shift = lambda d: d + 1 if d >= 0 else d  # noqa: E731
            h = h.flatten(shift(layer.start_dim), shift(layer.end_dim))
        elif isinstance(layer, torch.nn.Dropout):
            h = masks.dropout(layer, h)
        else:
            h = layer(h)
    return h


def template_of(model: torch.nn.Module, masks: Masks) -> torch.nn.Module:
    """A copy of `model` for `functional_call`, whose dropout modules draw from `masks`."""
    template = copy.deepcopy(model)
    for module in template.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and type(module) in DROPOUTS:
            module.forward = (lambda mod: lambda x: masks.dropout(mod, x))(module)  # type: ignore[method-assign]
    return template
