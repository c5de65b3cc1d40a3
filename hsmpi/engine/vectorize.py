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
from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, vmap

from hsmpi.engine.data import Data, epoch_sum
from hsmpi.engine.member import Member
from hsmpi.tasks import task_loss, task_metrics

SUPPORTED = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}


def reason_not_to(members: list[Member], data: Data) -> str | None:
    """Why these members cannot be trained as one batched model (None: they can)."""
    if len(members) < 2:
        return "one member on this rank"
    model, opt, task = members[0].model, members[0].optimizer, members[0].task
    if getattr(task, "train_step", None) is not None:
        return "the task has its own train_step"
    if getattr(task, "scheduler", None) is not None:
        return "the task has a learning-rate scheduler"
    if data.tensors is None:
        return "the training data is not a TensorDataset"
    if any(True for _ in model.buffers()):
        return "the model has buffers (running statistics) that would need per-member updates"
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model uses dropout, whose draws would depend on which members share a rank"
    kinds = {type(m.optimizer) for m in members}
    if len(kinds) != 1 or type(opt) not in SUPPORTED:
        return f"the optimizer is {', '.join(sorted(k.__name__ for k in kinds))}; SGD, Adam and AdamW are batched"
    if not all(p.requires_grad for p in model.parameters()):
        return "some of the model's parameters are frozen (requires_grad=False)"
    for m in members:
        if len(m.optimizer.param_groups) != 1:
            return "the optimizer has several parameter groups"
        if [id(p) for p in m.optimizer.param_groups[0]["params"]] != [id(p) for p in m.model.parameters()]:
            return "the optimizer does not train exactly the model's parameters, in order"
        g = m.optimizer.param_groups[0]
        if g.get("maximize") or g.get("amsgrad") or g.get("differentiable") or g.get("capturable"):
            return "the optimizer uses maximize, amsgrad, differentiable or capturable"
        if len({bool(x.optimizer.param_groups[0].get("decoupled_weight_decay")) for x in members}) != 1:
            return "members mix Adam with and without decoupled weight decay"
    if len({m.batch_size for m in members}) != 1:
        return "members have different batch sizes this session"
    return None


def _column(members: list[Member], key: str, index: int | None = None) -> list[float]:
    """One hyperparameter of every member's optimizer."""
    values = [m.optimizer.param_groups[0][key] for m in members]
    return [float(v[index] if index is not None else v) for v in values]


class Batched:
    """K members' parameters and optimizer state as (K, P) matrices, for one session.

    Row k is member k's parameters flattened in `named_parameters` order, so
    the batched optimizer is a dozen tensor operations on a few (K, P)
    matrices whatever the model's shape, and each parameter is a view.
    """

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.kind = SUPPORTED[type(members[0].optimizer)]
        if self.kind == "adam" and members[0].optimizer.param_groups[0].get("decoupled_weight_decay"):
            self.kind = "adamw"  # Adam(decoupled_weight_decay=True) is AdamW
        self.base = members[0].model
        self.device = members[0].device
        first = dict(self.base.named_parameters())
        self.names = list(first)
        self.shapes = [first[n].shape for n in self.names]
        sizes = [first[n].numel() for n in self.names]
        self.bounds = [(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(len(sizes))]
        self.dtype = first[self.names[0]].dtype
        self.per = [list(m.model.parameters()) for m in members]  # named_parameters order
        with torch.no_grad():
            self.flat = self._matrix([[p.detach() for p in ps] for ps in self.per]).requires_grad_()
        self.state = self._stack_state()
        col = lambda values: torch.tensor(values, dtype=self.dtype, device=self.device).view(-1, 1)  # noqa: E731
        self.hp = {k: col(_column(members, k)) for k in ("lr", "weight_decay")}
        if self.kind == "sgd":
            for k in ("momentum", "dampening"):
                self.hp[k] = col(_column(members, k))
            self.use_momentum = self.hp["momentum"] != 0
            self.nesterov = torch.tensor([bool(m.optimizer.param_groups[0]["nesterov"]) for m in members],
                                         device=self.device).view(-1, 1)
        else:
            self.b1 = torch.tensor(_column(members, "betas", 0), dtype=torch.float64, device=self.device)
            self.b2 = torch.tensor(_column(members, "betas", 1), dtype=torch.float64, device=self.device)
            # 1 - beta in float64 first, as torch computes it from Python floats.
            self.hp["one_minus_beta1"] = (1 - self.b1).to(self.dtype).view(-1, 1)
            self.hp["one_minus_beta2"] = (1 - self.b2).to(self.dtype).view(-1, 1)
            self.hp["beta2"] = self.b2.to(self.dtype).view(-1, 1)
            self.lr64 = torch.tensor(_column(members, "lr"), dtype=torch.float64, device=self.device)
            self.hp["eps"] = col(_column(members, "eps"))

    def params(self) -> dict[str, torch.Tensor]:
        """Each parameter as a (K, *shape) view of the flat matrix (autograd sends gradients to it)."""
        return {n: self.flat[:, a:b].view(-1, *shape) for n, (a, b), shape in zip(self.names, self.bounds, self.shapes)}

    def _matrix(self, per_member: list[list[torch.Tensor | None]]) -> torch.Tensor:
        """(K, P) from K lists of per-parameter tensors: one stack per parameter, one cat; None reads as zeros."""
        columns = []
        for j, shape in enumerate(self.shapes):
            zero = torch.zeros(shape, dtype=self.dtype, device=self.device)
            column: list[torch.Tensor] = []
            for ts in per_member:
                t = ts[j]
                column.append(zero if t is None else t)
            columns.append(torch.stack(column).reshape(len(per_member), -1))
        return torch.cat(columns, dim=1)

    def _rows(self, key: str) -> torch.Tensor:
        """A state tensor of every member, (K, P), zeros where a member has none yet."""
        per_member = []
        for m, ps in zip(self.members, self.per):
            states = [m.optimizer.state.get(p, {}).get(key) for p in ps]
            per_member.append([None] * len(ps) if any(t is None for t in states) else states)
        return self._matrix(per_member)

    def _stack_state(self) -> dict[str, Any]:
        firsts = [m.optimizer.state.get(ps[0], {}) for m, ps in zip(self.members, self.per)]
        if self.kind == "sgd":
            has = [s.get("momentum_buffer") is not None for s in firsts]
            return {"has_buf": torch.tensor(has, device=self.device).view(-1, 1), "buf": self._rows("momentum_buffer")}
        steps = [float(s["step"]) if "step" in s else 0.0 for s in firsts]
        return {"step": torch.tensor(steps, dtype=torch.float64, device=self.device),
                "exp_avg": self._rows("exp_avg"), "exp_avg_sq": self._rows("exp_avg_sq")}

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step for every member, each with its own hyperparameters."""
        if self.kind == "sgd":
            self._sgd()
        else:
            self._adam(decoupled=self.kind == "adamw")

    def _sgd(self) -> None:
        p, g, hp, st = self.flat, self.flat.grad, self.hp, self.state
        assert g is not None
        g = g + hp["weight_decay"] * p
        buf = torch.where(st["has_buf"], hp["momentum"] * st["buf"] + (1 - hp["dampening"]) * g, g)
        st["buf"] = torch.where(self.use_momentum, buf, st["buf"])
        direction = torch.where(self.use_momentum, torch.where(self.nesterov, g + hp["momentum"] * buf, buf), g)
        p.sub_(hp["lr"] * direction)
        st["has_buf"] = st["has_buf"] | self.use_momentum

    def _adam(self, decoupled: bool) -> None:
        p, g, hp, st = self.flat, self.flat.grad, self.hp, self.state
        assert g is not None
        st["step"] += 1
        step = st["step"]
        # Bias corrections in float64, as torch computes them from Python floats.
        step_size = (self.lr64 / (1 - self.b1 ** step)).to(self.dtype).view(-1, 1)
        bc2_sqrt = (1 - self.b2 ** step).sqrt().to(self.dtype).view(-1, 1)
        if decoupled:
            p.mul_(1 - hp["lr"] * hp["weight_decay"])
        else:
            g = g + hp["weight_decay"] * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, hp["one_minus_beta1"])
        v.mul_(hp["beta2"]).addcmul_(g, g * hp["one_minus_beta2"])
        p.sub_(step_size * m / (v.sqrt() / bc2_sqrt + hp["eps"]))

    def _unstacked(self, matrix: torch.Tensor) -> list[list[torch.Tensor]]:
        """matrix (K, P) as per member, per parameter views: one unbind per parameter, no Python loop over K."""
        columns = [matrix[:, a:b].reshape(-1, *shape).unbind(0) for (a, b), shape in zip(self.bounds, self.shapes)]
        return [list(row) for row in zip(*columns)]

    def write_back(self) -> None:
        """Parameters into each member's own model (one foreach copy); optimizer state as row views."""
        weights = self._unstacked(self.flat.detach())
        with torch.no_grad():
            torch._foreach_copy_([p for ps in self.per for p in ps], [w for ws in weights for w in ws])
        if self.kind == "sgd":
            has = self.state["has_buf"].view(-1).tolist()
            bufs = self._unstacked(self.state["buf"])
            for m, ps, ok, rows in zip(self.members, self.per, has, bufs):
                if ok:
                    for p, row in zip(ps, rows):
                        m.optimizer.state[p] = {"momentum_buffer": row}
            return
        steps = self.state["step"].to("cpu", torch.float32)
        # One CPU step tensor per (member, parameter), as torch keeps them: distinct views of one matrix.
        step_views = steps.view(-1, 1).repeat(1, len(self.names)).unbind(0)
        firsts, seconds = self._unstacked(self.state["exp_avg"]), self._unstacked(self.state["exp_avg_sq"])
        for k, (m, ps, done) in enumerate(zip(self.members, self.per, steps.tolist())):
            if done == 0:
                continue
            per_param = step_views[k].unbind(0)
            for j, p in enumerate(ps):
                m.optimizer.state[p] = {"step": per_param[j], "exp_avg": firsts[k][j], "exp_avg_sq": seconds[k][j]}


def train(members: list[Member], data: Data, epochs: int,
          on_epoch: Callable[[], None] | None = None) -> list[float]:
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
        batch_losses = []
        for start in range(0, len(data), size):
            index = orders[:, start:start + size]
            losses = losses_of(batched.params(), x_all[index], y_all[index])
            batched.flat.grad = None
            losses.sum().backward()
            batched.step()
            batch_losses.append(losses.detach())  # summed once per epoch: no extra kernels per step
        epoch_means = (epoch_sum(batch_losses, len(data), size) / len(data)).cpu()
        if on_epoch is not None:
            for _ in members:
                on_epoch()
        alive &= torch.isfinite(epoch_means)
        means = [float(v) if ok else math.nan for v, ok in zip(epoch_means, alive)]
    batched.write_back()
    return means


@torch.no_grad()
def evaluate(members: list[Member], data: Data) -> list[dict[str, float]]:
    """Every member's loss (and the task's metrics) over the whole dataset, one batched forward per batch."""
    task, base = members[0].task, members[0].model
    names = [n for n, _ in base.named_parameters()]
    per = [dict(m.model.named_parameters()) for m in members]
    params = {n: torch.stack([p[n] for p in per]) for n in names}
    base.eval()
    if getattr(task, "metrics", None) is None:  # the loss itself batched, as every task without metrics had it
        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return task_loss(task, functional_call(base, p, (x,)), y)

        losses_of = vmap(loss, in_dims=(0, None, None))
        total = torch.zeros(len(members), dtype=torch.float64, device=members[0].device)
        for x, y in data.in_order():
            total += losses_of(params, x, y).double() * len(x)
        return [{"loss": float(v)} for v in (total / len(data)).cpu()]
    outputs_of = vmap(lambda p, x: functional_call(base, p, (x,)), in_dims=(0, None))
    totals: list[dict[str, torch.Tensor]] = [{} for _ in members]
    for x, y in data.in_order():
        for k, out in enumerate(outputs_of(params, x)):  # the metrics per member, on its own outputs
            for name, value in {"loss": task_loss(task, out, y), **task_metrics(task, out, y)}.items():
                weighted = value.double() * len(x)
                totals[k][name] = weighted if name not in totals[k] else totals[k][name] + weighted
    return [{name: float(t) / len(data) for name, t in member.items()} for member in totals]
