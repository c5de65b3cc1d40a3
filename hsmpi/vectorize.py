"""Vectorised members: the K members on a rank trained as one batched model.

Parameters are stacked along a new leading dimension, one `vmap`ped
`functional_call` runs every member's forward at once, one backward gives
every member's gradient (members are independent, so the gradient of the sum
of their losses is each one's own), and a batched optimizer applies each
member's own hyperparameters in one set of tensor operations.  Each member
keeps its own data order.  Before and after a session the stacked state is
moved from and back into the members' own models and optimizers, so
selection, sharing and checkpoints do not know the difference.

Applies to SGD, Adam and AdamW with one parameter group, models without
buffers (running statistics) or dropout (whose draws would depend on which
members share a rank), TensorDataset data, and one batch size for all
members.  Anything else trains one member at a time, and `reason` says why.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import functional_call, vmap

from .data import Data
from .member import Member
from .tasks import task_loss

SUPPORTED = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}


def reason_not_to(members: list[Member], data: Data) -> str | None:
    """Why these members cannot be trained as one batched model (None: they can)."""
    if len(members) < 2:
        return "one member on this rank"
    model, opt = members[0].model, members[0].optimizer
    if data.tensors is None:
        return "the training data is not a TensorDataset"
    if any(True for _ in model.buffers()):
        return "the model has buffers (running statistics) that would need per-member updates"
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model uses dropout, whose draws would depend on which members share a rank"
    kinds = {type(m.optimizer) for m in members}
    if len(kinds) != 1 or type(opt) not in SUPPORTED:
        return f"the optimizer is {', '.join(sorted(k.__name__ for k in kinds))}; SGD, Adam and AdamW are batched"
    for m in members:
        if len(m.optimizer.param_groups) != 1:
            return "the optimizer has several parameter groups"
        g = m.optimizer.param_groups[0]
        if g.get("maximize") or g.get("amsgrad") or g.get("differentiable") or g.get("capturable"):
            return "the optimizer uses maximize, amsgrad, differentiable or capturable"
    if len({m.batch_size for m in members}) != 1:
        return "members have different batch sizes this session"
    return None


def _column(members: list[Member], key: str, device: torch.device, index: int | None = None) -> torch.Tensor:
    """One hyperparameter of every member's optimizer as a float64 (K,) tensor."""
    values = [m.optimizer.param_groups[0][key] for m in members]
    if index is not None:
        values = [v[index] for v in values]
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)


class Batched:
    """K members' parameters and optimizer state, stacked, for one session."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.kind = SUPPORTED[type(members[0].optimizer)]
        self.base = members[0].model
        self.device = members[0].device
        self.names = [n for n, _ in self.base.named_parameters()]
        per = [dict(m.model.named_parameters()) for m in members]
        self.params = {n: torch.stack([p[n].detach() for p in per]).requires_grad_() for n in self.names}
        self.state = self._stack_state(per)
        self.hp = {k: _column(members, k, self.device) for k in ("lr", "weight_decay")}
        if self.kind == "sgd":
            for k in ("momentum", "dampening"):
                self.hp[k] = _column(members, k, self.device)
            self.nesterov = torch.tensor([bool(m.optimizer.param_groups[0]["nesterov"]) for m in members],
                                         device=self.device)
        else:
            self.hp["beta1"] = _column(members, "betas", self.device, 0)
            self.hp["beta2"] = _column(members, "betas", self.device, 1)
            self.hp["eps"] = _column(members, "eps", self.device)

    def _stack_state(self, per: list[dict[str, torch.nn.Parameter]]) -> dict[str, Any]:
        """Optimizer state as stacked tensors; members with none yet start from zeros."""
        states = [[m.optimizer.state.get(p[n], {}) for n in self.names] for m, p in zip(self.members, per)]
        out: dict[str, Any] = {}
        if self.kind == "sgd":
            out["has_buf"] = torch.tensor([s[0].get("momentum_buffer") is not None for s in states], device=self.device)
            out["buf"] = {n: torch.stack([s[j].get("momentum_buffer") if s[j].get("momentum_buffer") is not None
                                          else torch.zeros_like(self.params[n][0]) for s in states]).detach()
                          for j, n in enumerate(self.names)}
        else:
            out["step"] = torch.tensor([float(s[0]["step"]) if "step" in s[0] else 0.0 for s in states],
                                       dtype=torch.float64, device=self.device)
            for key in ("exp_avg", "exp_avg_sq"):
                out[key] = {n: torch.stack([s[j][key] if key in s[j] else torch.zeros_like(self.params[n][0])
                                            for s in states]).detach() for j, n in enumerate(self.names)}
        return out

    def _col(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A (K,) hyperparameter shaped to broadcast against a stacked (K, ...) tensor."""
        return self.hp[key].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step for every member, each with its own hyperparameters."""
        if self.kind == "sgd":
            self._sgd()
        else:
            self._adam(decoupled=self.kind == "adamw")

    def _sgd(self) -> None:
        has = self.state["has_buf"]
        for n in self.names:
            p, g = self.params[n], self.params[n].grad
            assert g is not None
            g = g + self._col("weight_decay", p) * p
            mom, damp = self._col("momentum", p), self._col("dampening", p)
            buf = self.state["buf"][n]
            new_buf = torch.where(has.view(-1, *([1] * (p.dim() - 1))), mom * buf + (1 - damp) * g, g)
            use = mom != 0
            self.state["buf"][n] = torch.where(use, new_buf, buf)
            nest = self.nesterov.view(-1, *([1] * (p.dim() - 1)))
            direction = torch.where(use, torch.where(nest, g + mom * new_buf, new_buf), g)
            p.sub_(self._col("lr", p) * direction)
        self.state["has_buf"] = has | (self.hp["momentum"] != 0)

    def _adam(self, decoupled: bool) -> None:
        self.state["step"] += 1
        step = self.state["step"]
        b1, b2 = self.hp["beta1"], self.hp["beta2"]
        step_size = self.hp["lr"] / (1 - b1 ** step)  # float64, as torch computes them in Python floats
        bc2_sqrt = (1 - b2 ** step).sqrt()
        for n in self.names:
            p, g = self.params[n], self.params[n].grad
            assert g is not None
            wd = self._col("weight_decay", p)
            if decoupled:
                p.mul_(1 - self._col("lr", p) * wd)
            else:
                g = g + wd * p
            m, v = self.state["exp_avg"][n], self.state["exp_avg_sq"][n]
            m.lerp_(g, 1 - self._col("beta1", p))
            v.mul_(self._col("beta2", p)).addcmul_(g, g * (1 - self._col("beta2", p)))
            shape = (-1, *([1] * (p.dim() - 1)))
            denom = (v.sqrt() / bc2_sqrt.to(p.dtype).view(shape)) + self._col("eps", p)
            p.sub_(step_size.to(p.dtype).view(shape) * m / denom)

    def write_back(self) -> None:
        """Unstack parameters and optimizer state into each member's own model and optimizer."""
        for k, member in enumerate(self.members):
            params = dict(member.model.named_parameters())
            opt = member.optimizer
            for n in self.names:
                p = params[n]
                with torch.no_grad():
                    p.copy_(self.params[n][k])
                if self.kind == "sgd":
                    if self.state["has_buf"][k]:
                        opt.state[p] = {"momentum_buffer": self.state["buf"][n][k].clone()}
                else:
                    step = torch.tensor(float(self.state["step"][k]), dtype=torch.float32)
                    if self.state["step"][k] > 0:
                        opt.state[p] = {"step": step, "exp_avg": self.state["exp_avg"][n][k].clone(),
                                        "exp_avg_sq": self.state["exp_avg_sq"][n][k].clone()}


def train(members: list[Member], data: Data, epochs: int) -> list[float]:
    """Train `members` together for `epochs`; each member's mean training loss of the last epoch (NaN: diverged)."""
    assert data.tensors is not None
    x_all, y_all = data.tensors[0], data.tensors[1]
    batched = Batched(members)
    task, base = members[0].task, batched.base
    size = members[0].batch_size

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(task, functional_call(base, params, (x,)), y)

    losses_of = vmap(forward)
    base.train()
    means = [math.nan] * len(members)
    alive = torch.ones(len(members), dtype=torch.bool)
    for _ in range(epochs):
        # A diverged member draws no more data orders, as in the one-at-a-time path, so its stream stays in step.
        orders = torch.stack([torch.randperm(len(data), generator=m.data_gen) if ok else torch.arange(len(data))
                              for m, ok in zip(members, alive)]).to(x_all.device)
        total = torch.zeros(len(members), dtype=torch.float64, device=x_all.device)
        for start in range(0, len(data), size):
            index = orders[:, start:start + size]
            losses = losses_of(batched.params, x_all[index], y_all[index])
            for p in batched.params.values():
                p.grad = None
            losses.sum().backward()
            batched.step()
            total += losses.detach().double() * index.shape[1]
        epoch_means = (total / len(data)).cpu()
        alive &= torch.isfinite(epoch_means)
        means = [float(v) if ok else math.nan for v, ok in zip(epoch_means, alive)]
    batched.write_back()
    return means


@torch.no_grad()
def evaluate(members: list[Member], data: Data) -> list[float]:
    """Every member's mean loss over the whole dataset, in one batched forward per batch."""
    task, base = members[0].task, members[0].model
    names = [n for n, _ in base.named_parameters()]
    per = [dict(m.model.named_parameters()) for m in members]
    params = {n: torch.stack([p[n] for p in per]) for n in names}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(task, functional_call(base, p, (x,)), y)

    losses_of = vmap(loss, in_dims=(0, None, None))
    base.eval()
    total = torch.zeros(len(members), dtype=torch.float64, device=members[0].device)
    for x, y in data.in_order():
        total += losses_of(params, x, y).double() * len(x)
    return [float(v) for v in (total / len(data)).cpu()]
