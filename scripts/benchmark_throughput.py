"""Member-steps per second through hsmpi's own training loop: one at a time, vectorised, and a raw batched loop.

    python scripts/benchmark_throughput.py --members 1 8 64 --epochs 3            # CPU
    python scripts/benchmark_throughput.py --device cuda --members 64 512 4096     # one GPU
    python scripts/benchmark_throughput.py --task digits-bn --members 8 64        # BatchNorm + dropout CNN

For each K it builds K members of the task (each with its own hyperparameters
drawn from the space and its own data order), trains them `--epochs` epochs
with `Member.train` one after another and as one `vectorize.Stack` (kept across
calls, as a population keeps it across sessions: each call is one session),
and prints a Markdown table of member-steps/s (a member-step is one optimizer
step of one member on one batch).  A first epoch is run and not timed, to warm
up kernels and allocators.

For a model that is a `Sequential` of `Linear` layers and elementwise
activations trained with Adam (the default task's), it also times a raw
batched loop: the same layers as batched matrix products (`baddbmm`) on
stacked weights, random batches drawn for all members at once, and Adam
written out per tensor with a learning rate per member: what a population of
that model costs with nothing of hsmpi around it.  Raw and vectorised runs
alternate `--repeats` times in one process and the table gives the medians
and the median of the paired ratios.

`digits-bn` is the built-in digits-cnn model (two convolutions with
BatchNorm, max-pooling, dropout) on the digits as tensors, trained with SGD
and momentum, without the task's schedule and clipping (which train one
member at a time).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch

from hsmpi.algorithm.space import sample_space
from hsmpi.algorithm.streams import HPARAMS, derive_seed
from hsmpi.engine import vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member
from hsmpi.tasks import load_task
from hsmpi.tasks.digits_cnn import DigitsCNN


class DigitsBN(DigitsCNN):
    """digits-cnn's BatchNorm and dropout CNN on the digits as a TensorDataset, plain SGD with momentum."""

    scheduler = None
    train_step = None

    def data(self, seed: int) -> tuple[torch.utils.data.TensorDataset, ...]:
        return tuple(torch.utils.data.TensorDataset(torch.from_numpy(part.pixels.reshape(-1, 1, 8, 8) / 16.0).float(),
                                                    torch.from_numpy(part.labels).long())
                     for part in super().data(seed))


def _task(name: str) -> object:
    return DigitsBN() if name == "digits-bn" else load_task(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(task_name: str, k: int, device: torch.device) -> tuple[list[Member], Data]:
    task = _task(task_name)
    data = Data(task.data(0)[0], device)
    members = []
    for i in range(k):
        hp = sample_space(task.space, np.random.default_rng(derive_seed(0, HPARAMS, i)))
        members.append(Member.create(task, i, hp, seed=0, device=device))
    return members, data


def _steps(members: list[Member], data: Data) -> int:
    return len(range(0, len(data), members[0].batch_size))


def rate(members: list[Member], data: Data, epochs: int) -> float:
    """Member-steps per second one at a time over `epochs` timed epochs (after one warm-up epoch)."""
    for m in members:
        m.train(data, 1)
    _sync(data.device)
    start = time.perf_counter()
    for m in members:
        m.train(data, epochs)
    _sync(data.device)
    return len(members) * _steps(members, data) * epochs / (time.perf_counter() - start)


def stack_rate(stack: vectorize.Stack, data: Data, epochs: int) -> float:
    """Member-steps per second of one vectorised session of `epochs` epochs."""
    _sync(data.device)
    start = time.perf_counter()
    stack.train(data, epochs)
    _sync(data.device)
    return len(stack.members) * _steps(stack.members, data) * epochs / (time.perf_counter() - start)


class Raw:
    """The raw batched loop for a Sequential of Linear layers and elementwise activations, with Adam."""

    def __init__(self, members: list[Member], data: Data) -> None:
        model = members[0].model
        self.layers = list(model.children()) if isinstance(model, torch.nn.Sequential) else []
        self.ok = (bool(self.layers) and type(members[0].optimizer) is torch.optim.Adam
                   and all(isinstance(m, torch.nn.Linear) or not list(m.parameters()) for m in self.layers))
        if not self.ok:
            return
        k, device = len(members), data.device
        self.x, self.y = data.tensors[0], data.tensors[1]  # type: ignore[index]
        self.batch, self.per_epoch = members[0].batch_size, _steps(members, data)
        linears = [(i, m) for i, m in enumerate(self.layers) if isinstance(m, torch.nn.Linear)]
        self.weights = {i: torch.randn(k, m.in_features, m.out_features, device=device).div_(m.in_features ** 0.5)
                        .requires_grad_() for i, m in linears}
        self.biases = {i: torch.zeros(k, 1, m.out_features, device=device, requires_grad=True) for i, m in linears}
        self.params = [t for i, _ in linears for t in (self.weights[i], self.biases[i])]
        self.lr = torch.tensor([float(m.optimizer.param_groups[0]["lr"]) for m in members], device=device)
        self.m = [torch.zeros_like(t) for t in self.params]
        self.v = [torch.zeros_like(t) for t in self.params]
        self.t = 0

    def rate(self, epochs: int) -> float:
        k = len(self.lr)
        _sync(self.x.device)
        start = time.perf_counter()
        for _ in range(epochs * self.per_epoch):
            i = torch.randint(0, len(self.x), (k, self.batch), device=self.x.device)
            h = self.x[i]
            for j, layer in enumerate(self.layers):
                h = torch.baddbmm(self.biases[j], h, self.weights[j]) if j in self.weights else layer(h)
            loss = ((h - self.y[i]) ** 2).mean(dim=(1, 2)).sum()
            grads = torch.autograd.grad(loss, self.params)
            self.t += 1
            with torch.no_grad():
                for p, g, m, v in zip(self.params, grads, self.m, self.v):
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    update = (m / (1 - 0.9 ** self.t)) / ((v / (1 - 0.999 ** self.t)).sqrt() + 1e-8)
                    p.sub_(self.lr.view(k, *([1] * (p.dim() - 1))) * update)
        _sync(self.x.device)
        return k * self.per_epoch * epochs / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="regression1d")
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-sequential", type=int, default=1024,
                   help="skip the one-at-a-time path above this K (it only gets slower per member)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="alternated timings of raw and vectorised per K")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"task {args.task}, device {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, epochs {args.epochs} (+1 warm-up)\n")
    print("| K members | one at a time (member-steps/s) | vectorised (member-steps/s) | speed-up "
          "| raw batched (member-steps/s) | vectorised / raw |")
    print("|---|---|---|---|---|---|")
    for k in args.members:
        members, data = build(args.task, k, device)
        seq = rate(copy.deepcopy(members), data, args.epochs) if k <= args.max_sequential else float("nan")
        vec, raw, ratios = float("nan"), float("nan"), [float("nan")]
        if k > 1:
            stack = vectorize.Stack(members, data)
            stack.train(data, 1)  # warm-up
            baseline = Raw(members, data)
            if baseline.ok:
                baseline.rate(1)
            vecs, raws = [], []
            for _ in range(args.repeats):  # alternated, so that drift hits both alike
                if baseline.ok:
                    raws.append(baseline.rate(args.epochs))
                vecs.append(stack_rate(stack, data, args.epochs))
            vec = float(np.median(vecs))
            if raws:
                raw = float(np.median(raws))
                ratios = [a / b for a, b in zip(vecs, raws)]
        speed = vec / seq if k > 1 and seq == seq else float("nan")
        print(f"| {k} | {seq:,.0f} | {vec:,.0f} | {speed:.1f}x | {raw:,.0f} | {float(np.median(ratios)):.2f} |",
              flush=True)

if __name__ == "__main__":
    main()
