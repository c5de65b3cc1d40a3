"""Vectorised members: the K members on a rank trained as one batched model.

A rank's members live in one `Stack` for the whole run.  Every member's
parameters are one row of a (K, P) matrix, and its model's parameters and its
optimizer's state are views of its rows, so selection, sharing, checkpoints and
results read and write members as they always did, and the matrices see it
with no copy.  Before a session the stack takes back only what was replaced
since the last one: a member that adopted a winner's state has new optimizer
tensors, and those are copied into its rows and made views again (one row per
changed member, not a restack of all K).

A session trains all K at once: one `vmap`ped `functional_call` forward, one
backward to a gradient per parameter of all members, and a batched optimizer
step with each member's own hyperparameters, a few tensor operations on the
(K, P) matrices whatever the model.  Each member keeps its own data order.
Buffers (BatchNorm's running statistics) are stacked per member and updated
in place under `vmap`, as one model updates its own.  Dropout masks come from a
counter-based hash of a key that each member draws from its own random stream
once per epoch, so a member's masks do not depend on which members share its
rank; they are not the masks the one-at-a-time path draws (the masks, and the
direct path for plain Sequential MLPs, are in hsmpi.engine.batched).

Applies to SGD, Adam and AdamW with one parameter group, TensorDataset data,
one batch size for all members, and any model `vmap` can run; a task's
scheduler steps for each member after every batched step, and the stack reads
the values it set.  Anything else trains one member at a time, and
hsmpi.engine.batched's `reason_not_to` (or the `Unbatchable` a `Stack` raises)
says why.  On the CPU an MLP member gets the same bits in a stack of any size,
one included (hsmpi.engine.batched.direct_forward; measured, and tested across
ranks), so which members share a rank does not change them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call, vmap

from hsmpi.engine.batched import DROPOUTS, SUPPORTED, Masks, direct_forward, direct_layers, template_of
from hsmpi.engine.data import Data, epoch_sum
from hsmpi.engine.member import Member
from hsmpi.parallel import flatstate
from hsmpi.tasks import task_loss, task_metrics


class Unbatchable(ValueError):
    """These members cannot be trained as one batched model (the message says why)."""


def _kind(optimizer: torch.optim.Optimizer) -> str:
    kind = SUPPORTED[type(optimizer)]
    if kind == "adam" and optimizer.param_groups[0].get("decoupled_weight_decay"):
        return "adamw"  # Adam(decoupled_weight_decay=True) is AdamW
    return kind


def _column(members: list[Member], key: str, index: int | None = None) -> list[float]:
    """One hyperparameter of every member's optimizer."""
    values = [m.optimizer.param_groups[0][key] for m in members]
    return [float(v[index] if index is not None else v) for v in values]


class Stack:
    """K members' parameters and optimizer state as (K, P) matrices, kept for the whole run.

    Row k is member k's parameters flattened in `named_parameters` order; member k's parameters
    and optimizer state tensors are views of row k.
    """

    def __init__(self, members: list[Member], data: Data, direct: bool = True) -> None:
        self.members = list(members)
        self.models = [m.model for m in members]
        self.row = {id(m): k for k, m in enumerate(members)}
        first = members[0].model
        self.masks = Masks()
        self.template = template_of(first, self.masks)
        # A Sequential MLP runs as batched matrix products without vmap (the same numbers, less overhead).
        self.direct = direct_layers(self.template) if direct else None
        self.dropout = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and type(m) in DROPOUTS and m.p > 0
                           for m in first.modules())
        named = list(first.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        sizes = [p.numel() for _, p in named]
        self.bounds = [(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(len(sizes))]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self.device, self.dtype = named[0][1].device, named[0][1].dtype
        k, width = len(members), sum(sizes)
        self.flat = torch.zeros(k, width, dtype=self.dtype, device=self.device)
        # One leaf per parameter, (K, *shape), a view of the matrix: autograd gives each its own gradient
        # (no (K, P) zero-fills per slice) and the optimizer updates the matrix they share.
        self.leaves = [self.flat[:, a:b].view(k, *shape).requires_grad_()
                       for (a, b), shape in zip(self.bounds, self.shapes)]
        # The step's gradients land in one (K, P) matrix: one strided copy per parameter, whatever layout
        # autograd gives them (a Linear weight's gradient comes transposed).
        self.grad = torch.empty_like(self.flat)
        self.grads = [self.grad[:, a:b].view(k, *shape) for (a, b), shape in zip(self.bounds, self.shapes)]
        self.kind = ""
        self.state: dict[str, torch.Tensor] = {}
        self.linked = [False] * k  # member's optimizer state is views of the matrices
        self.generators = [torch.Generator() for _ in members] if self.dropout else []
        self._try(data)  # before the members become views of the rows: a model vmap cannot run is left as it is
        self.adopt()

    def holds(self, members: list[Member]) -> bool:
        """Is this the stack of exactly these members and models?"""
        return len(members) == len(self.members) and all(
            a is b and a.model is model for a, b, model in zip(members, self.members, self.models))

    # ---- keeping the rows and the members in step ---------------------------------------------------
    def _view(self, matrix: torch.Tensor, k: int, j: int) -> torch.Tensor:
        a, b = self.bounds[j]
        return matrix[k, a:b].view(self.shapes[j])

    def _addresses(self, matrix: torch.Tensor, k: int) -> list[int]:
        """Where member k's views of `matrix` start, one per parameter."""
        row = matrix.data_ptr() + k * matrix.shape[1] * matrix.element_size()
        return [row + a * matrix.element_size() for a, _ in self.bounds]

    @staticmethod
    def _starts(tensors: Sequence[Any]) -> list[int]:
        return [t.data_ptr() if isinstance(t, torch.Tensor) else -1 for t in tensors]

    @torch.no_grad()
    def adopt(self) -> None:
        """Take into the rows whatever the members hold that is not a view of them (a member's first
        session, or the state of a winner it adopted since), and this session's hyperparameters."""
        kind = _kind(self.members[0].optimizer)
        if kind != self.kind:  # the first session, or a space that chose another optimizer
            self.kind = kind
            names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
            self.state = {n: torch.zeros_like(self.flat) for n in names}
            self.steps = torch.zeros(len(self.members), len(self.names))  # Adam's per-parameter CPU steps
            self.has = [False] * len(self.members)
            self.linked = [False] * len(self.members)
        for k, m in enumerate(self.members):
            params = list(m.model.parameters())
            if self._starts(params) != self._addresses(self.flat, k):
                for j, p in enumerate(params):
                    if p.data_ptr() != self._addresses(self.flat, k)[j]:
                        view = self._view(self.flat, k, j)
                        view.copy_(p.detach())
                        p.data = view
            self._adopt_state(k, m.optimizer, params)
        self._read_hparams()

    def _adopt_state(self, k: int, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Member k's optimizer state into its rows unless it is already views of them."""
        names = list(self.state)
        states = [optimizer.state.get(p, {}) for p in params]
        if self.linked[k] and all(self._starts([s.get(n) for s in states]) == self._addresses(self.state[n], k)
                                  for n in names):
            return
        self.has[k] = all(s.get(names[0]) is not None for s in states)
        if not self.has[k]:  # no state yet (or only part of one: start it afresh, as a new optimizer would)
            for n in names:
                self.state[n][k].zero_()
            self.steps[k] = 0.0
            self.linked[k] = False
            for p in params:
                optimizer.state.pop(p, None)
            return
        for j, s in enumerate(states):
            for n in names:
                self._view(self.state[n], k, j).copy_(s[n])
            if self.kind != "sgd":
                self.steps[k, j] = float(s["step"])
        self._link(k, optimizer, params)

    def _link(self, k: int, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Make member k's optimizer state views of its rows (as torch keeps it: one step tensor per
        parameter, on the CPU)."""
        for j, p in enumerate(params):
            if self.kind == "sgd":
                optimizer.state[p] = {"momentum_buffer": self._view(self.state["momentum_buffer"], k, j)}
            else:
                optimizer.state[p] = {"step": self.steps[k, j], "exp_avg": self._view(self.state["exp_avg"], k, j),
                                      "exp_avg_sq": self._view(self.state["exp_avg_sq"], k, j)}
        self.linked[k] = True

    def _read_hparams(self) -> None:
        """The session's hyperparameters and optimizer flags, read from the members' optimizers."""
        members = self.members
        self._read_values()
        if self.kind == "sgd":
            self.nesterov = torch.tensor([bool(m.optimizer.param_groups[0]["nesterov"]) for m in members],
                                         device=self.device).view(-1, 1)
            self.has_buf = torch.tensor(self.has, device=self.device).view(-1, 1)
        else:
            self.step64 = self.steps[:, 0].to(self.device, torch.float64)

    def _read_values(self) -> None:
        """The values a task's scheduler may move between steps (learning rate, momentum or betas, weight
        decay, eps), read from the members' optimizers: once a session, and after every step where a
        member has a scheduler."""
        members = self.members
        col = lambda values: torch.tensor(values, dtype=self.dtype, device=self.device).view(-1, 1)  # noqa: E731
        self.hp = {k: col(_column(members, k)) for k in ("lr", "weight_decay")}
        if self.kind == "sgd":
            for k in ("momentum", "dampening"):
                self.hp[k] = col(_column(members, k))
            self.use_momentum = self.hp["momentum"] != 0
            return
        self.b1 = torch.tensor(_column(members, "betas", 0), dtype=torch.float64, device=self.device)
        self.b2 = torch.tensor(_column(members, "betas", 1), dtype=torch.float64, device=self.device)
        # 1 - beta in float64 first, as torch computes it from Python floats.
        self.hp["one_minus_beta1"] = (1 - self.b1).to(self.dtype).view(-1, 1)
        self.hp["one_minus_beta2"] = (1 - self.b2).to(self.dtype).view(-1, 1)
        self.lr64 = torch.tensor(_column(members, "lr"), dtype=torch.float64, device=self.device)
        self.eps64 = torch.tensor(_column(members, "eps"), dtype=torch.float64, device=self.device)

    def _buffers(self) -> dict[str, torch.Tensor]:
        """Every member's buffers stacked, (K, *shape) per buffer: copies, written back by `_put_buffers`."""
        per = [dict(m.model.named_buffers()) for m in self.members]
        return {n: torch.stack([b[n] for b in per]) for n in self.buffer_names}

    @torch.no_grad()
    def _put_buffers(self, stacked: dict[str, torch.Tensor]) -> None:
        if not stacked:
            return
        targets, sources = [], []
        for m in self.members:
            own = dict(m.model.named_buffers())
            targets += [own[n] for n in self.buffer_names]
        for k in range(len(self.members)):
            sources += [stacked[n][k] for n in self.buffer_names]
        torch._foreach_copy_(targets, sources)

    def _after_training(self) -> None:
        """Steps into the members' step tensors; the first state of members that had none, as views (SGD
        keeps none without momentum, as torch does)."""
        if self.kind == "sgd":
            now = self.has_buf.view(-1).tolist()
        else:
            self.steps.copy_(self.step64.to("cpu", torch.float32).view(-1, 1).expand_as(self.steps))
            now = (self.step64 > 0).tolist()
        for k, m in enumerate(self.members):
            if now[k] and not self.linked[k]:
                self.has[k] = True
                self._link(k, m.optimizer, list(m.model.parameters()))

    # ---- step 4: a state to several members of the stack ------------------------------------------------
    @torch.no_grad()
    def spread(self, source: Member, targets: Sequence[Member]) -> bool:
        """Make `targets` copies of `source` (which has just loaded a shared state) by copying its rows:
        one indexed copy per matrix, whatever the number of targets.  False, with nothing done, where
        rows cannot carry the state (another optimizer class than the stack trains, or a member whose
        parameters are not views of its rows)."""
        rows = [self.row[id(m)] for m in [source, *targets]]
        if source._carried is not None or _kind(source.optimizer) != self.kind or any(
                self._starts(list(m.model.parameters())) != self._addresses(self.flat, r)
                for m, r in zip([source, *targets], rows)):
            return False
        k, rest = rows[0], rows[1:]
        self._adopt_state(k, source.optimizer, list(source.model.parameters()))  # its fresh tensors into its rows
        index = torch.tensor(rest, device=self.device)
        for matrix in (self.flat, *self.state.values()):
            matrix[index] = matrix[k].clone()  # one row, copied out first: source and targets share the matrix
        self.steps[rest] = self.steps[k].clone()
        own = dict(source.model.named_buffers())
        for m, r in zip(targets, rest):
            if own:
                theirs = dict(m.model.named_buffers())
                torch._foreach_copy_([theirs[n] for n in own], list(own.values()))
            m.steps, m._carried = source.steps, None
            self.has[r] = self.has[k]
            if not self.has[r]:
                m.optimizer.state.clear()
                self.linked[r] = False
            elif not self.linked[r]:
                self._link(r, m.optimizer, list(m.model.parameters()))
        return True

    # ---- the batched optimizer ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One optimizer step for every member, each with its own hyperparameters; `grad` is (K, P) and
        is used up."""
        if self.kind == "sgd":
            self._sgd(grad)
        else:
            self._adam(grad, decoupled=self.kind == "adamw")

    def _sgd(self, g: torch.Tensor) -> None:
        p, hp, buf = self.flat, self.hp, self.state["momentum_buffer"]
        g.addcmul_(p, hp["weight_decay"])
        new = torch.where(self.has_buf, hp["momentum"] * buf + (1 - hp["dampening"]) * g, g)
        buf.copy_(torch.where(self.use_momentum, new, buf))
        direction = torch.where(self.use_momentum, torch.where(self.nesterov, g + hp["momentum"] * new, new), g)
        p.sub_(hp["lr"] * direction)
        self.has_buf = self.has_buf | self.use_momentum

    def _adam(self, g: torch.Tensor, decoupled: bool) -> None:
        p, hp = self.flat, self.hp
        self.step64 += 1
        # Bias corrections in float64, as torch computes them from Python floats; the update
        # p -= step_size * m / (sqrt(v) / bc2_sqrt + eps) as p -= m / (sqrt(v) * scale + shift).
        step_size = self.lr64 / (1 - self.b1 ** self.step64)
        bc2_sqrt = (1 - self.b2 ** self.step64).sqrt()
        scale = (1 / (bc2_sqrt * step_size)).to(self.dtype).view(-1, 1)
        shift = (self.eps64 / step_size).to(self.dtype).view(-1, 1)
        if decoupled:
            p.mul_(1 - hp["lr"] * hp["weight_decay"])
        else:
            g.addcmul_(p, hp["weight_decay"])
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        m.lerp_(g, hp["one_minus_beta1"])
        v.lerp_(g.mul_(g), hp["one_minus_beta2"])
        p.addcdiv_(m, v.sqrt().mul_(scale).add_(shift), value=-1)

    # ---- a session's training and evaluation ---------------------------------------------------------
    def _keys(self, epochs: int) -> torch.Tensor:
        """(epochs, K) dropout keys, each member's from its own stream (zeros: the model has no dropout)."""
        if not self.dropout:
            return torch.zeros(epochs, len(self.members), dtype=torch.int64, device=self.device)
        keys = []
        for m, gen in zip(self.members, self.generators):
            gen.set_state(m.rng_state)
            keys.append(torch.randint(0, 2**62, (epochs,), generator=gen))
            m.rng_state = gen.get_state()
        return torch.stack(keys, 1).to(self.device)

    def _losses_of(self) -> Callable[..., torch.Tensor]:
        """(params, x, y, keys) -> every member's loss on its own batch, (K,)."""
        task, template, masks, layers = self.members[0].task, self.template, self.masks, self.direct
        if layers is not None:
            loss_of = vmap(lambda out, y: task_loss(task, out, y))

            def direct(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       keys: torch.Tensor) -> torch.Tensor:
                masks.key, masks.layer = keys, 0
                out = direct_forward(layers, params, x, masks)
                if getattr(task, "loss", None) is None and out.shape == y.shape:  # mean squared error
                    return (out - y).square().flatten(1).mean(1)
                return loss_of(out, y)

            return direct

        def forward(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    key: torch.Tensor) -> torch.Tensor:
            masks.key, masks.layer = key, 0
            return task_loss(task, functional_call(template, params, (x,)), y)

        return vmap(forward)

    def _try(self, data: Data) -> None:
        """One batched forward and backward on two samples, on copies of the buffers: raise `Unbatchable`
        if `vmap` cannot run the model."""
        x, y = data.sample(2)
        k = len(self.members)
        params = {**dict(zip(self.names, self.leaves)), **self._buffers()}
        self.template.train()
        try:
            losses = self._losses_of()(params, x.expand(k, *x.shape), y.expand(k, *y.shape),
                                       torch.zeros(k, dtype=torch.int64, device=self.device))
            torch.autograd.grad(losses.sum(), self.leaves)
        except Exception as err:  # noqa: BLE001 (whatever vmap cannot batch: the one-at-a-time path runs it)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise Unbatchable(f"vmap cannot batch the model: {first[:200]}") from None
        finally:
            self.masks.key = None

    def train(self, data: Data, epochs: int, on_epoch: Callable[[], None] | None = None) -> list[float]:
        """Train every member for `epochs`; each member's mean training loss of the last epoch (NaN:
        diverged)."""
        assert data.tensors is not None
        self.adopt()
        members, k = self.members, len(self.members)
        buffers = self._buffers()
        params = {**dict(zip(self.names, self.leaves)), **buffers}
        keys = self._keys(epochs)
        losses_of = self._losses_of()
        self.template.train()
        means = [math.nan] * k
        alive = torch.ones(k, dtype=torch.bool)
        try:
            # torch warns when a scheduler steps before its optimizer, which here steps as a row of the
            # stack: that warning is not this (filtered once here, not at every step).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                for epoch in range(epochs):
                    epoch_means = self._epoch(data, params, keys[epoch], losses_of, alive)
                    if on_epoch is not None:
                        for _ in members:
                            on_epoch()
                    alive &= torch.isfinite(epoch_means)
                    means = [float(v) if ok else math.nan for v, ok in zip(epoch_means, alive)]
        finally:
            self.masks.key = None
            self._put_buffers(buffers)
            self._after_training()
        return means

    def _epoch(self, data: Data, params: dict[str, torch.Tensor], keys: torch.Tensor,
               losses_of: Callable[..., torch.Tensor], alive: torch.Tensor) -> torch.Tensor:
        """One epoch of every member, each on its own data order; each member's mean training loss, (K,)
        on the CPU."""
        assert data.tensors is not None
        x_all, y_all = data.tensors[0], data.tensors[1]
        members, size = self.members, self.members[0].batch_size
        # A diverged member draws no more data orders, as in the one-at-a-time path, so its stream
        # stays in step; it trained (and counted its steps) through the epoch it diverged in.
        training = [m for m, ok in zip(members, alive.tolist()) if ok]
        scheduled = [m.scheduler for m in training if m.scheduler is not None]
        orders = torch.stack([torch.randperm(len(data), generator=m.data_gen) if ok else
                              torch.arange(len(data)) for m, ok in zip(members, alive)]).to(x_all.device)
        batch_losses = []
        for step, start in enumerate(range(0, len(data), size)):
            index = orders[:, start:start + size]
            self.masks.step = step
            losses = losses_of(params, x_all[index], y_all[index], keys)
            torch._foreach_copy_(self.grads, torch.autograd.grad(losses.sum(), self.leaves))
            self.step(self.grad)
            if scheduled:
                self._schedule(scheduled)
            batch_losses.append(losses.detach())  # summed once per epoch: no extra kernels per step
        for m in training:
            m.steps += len(batch_losses)
        return (epoch_sum(batch_losses, len(data), size) / len(data)).cpu()

    def _schedule(self, schedulers: list[Any]) -> None:
        """Step the members' schedulers, as the one-at-a-time path does after each optimizer step, and
        read the values they set for the next step."""
        for scheduler in schedulers:
            scheduler.step()
        self._read_values()

    @torch.no_grad()
    def evaluate(self, data: Data) -> list[dict[str, float]]:
        """Every member's loss (and the task's metrics) over the whole dataset, one batched forward per
        batch."""
        self.adopt()
        task, template = self.members[0].task, self.template
        params = {**{n: leaf.detach() for n, leaf in zip(self.names, self.leaves)}, **self._buffers()}
        if len(self.members) == 1:  # as two equal members: the bits a larger stack gives (see direct_forward)
            params = {n: t.expand(2, *t.shape[1:]) for n, t in params.items()}
        template.eval()
        if getattr(task, "metrics", None) is None:  # the loss itself batched, as every task without metrics had it
            def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return task_loss(task, functional_call(template, p, (x,)), y)

            losses_of = vmap(loss, in_dims=(0, None, None))
            total = torch.zeros(len(self.members), dtype=torch.float64, device=self.device)
            for x, y in data.in_order():
                total += losses_of(params, x, y)[:len(total)].double() * len(x)
            return [{"loss": float(v)} for v in (total / len(data)).cpu()]
        outputs_of = vmap(lambda p, x: functional_call(template, p, (x,)), in_dims=(0, None))
        totals: list[dict[str, torch.Tensor]] = [{} for _ in self.members]
        for x, y in data.in_order():
            for k, out in enumerate(outputs_of(params, x)[:len(totals)]):  # each member's metrics, own outputs
                for name, value in {"loss": task_loss(task, out, y), **task_metrics(task, out, y)}.items():
                    weighted = value.double() * len(x)
                    totals[k][name] = weighted if name not in totals[k] else totals[k][name] + weighted
        return [{name: float(t) / len(data) for name, t in member.items()} for member in totals]


def train(members: list[Member], data: Data, epochs: int,
          on_epoch: Callable[[], None] | None = None) -> list[float]:
    """Train `members` together for `epochs` in a stack of their own (a population keeps one across
    sessions instead)."""
    return Stack(members, data).train(data, epochs, on_epoch)


def evaluate(members: list[Member], data: Data) -> list[dict[str, float]]:
    """Every member's loss and metrics on `data`, batched (in a stack of their own)."""
    return Stack(members, data).evaluate(data)


class RowCopies:
    """Members of one stack that receive the same state (step 4): the first loads it, the others copy
    the first's rows (or, where rows cannot carry it, load it themselves)."""

    def __init__(self, stack: Stack, members: Sequence[Member]) -> None:
        self.stack = stack
        self.members = list(members)

    def header(self) -> flatstate.Header:
        return self.members[0].header()

    def pack(self, header: flatstate.Header, flat: torch.Tensor) -> None:
        self.members[0].pack(header, flat)

    def load_state(self, header: flatstate.Header, flat: torch.Tensor, host: torch.Tensor | None = None) -> None:
        first, rest = self.members[0], self.members[1:]
        first.load_state(header, flat, host)
        if not self.stack.spread(first, rest):
            for m in rest:
                m.load_state(header, flat, host)
