"""Member-steps per second through hsmpi's own training loop: one at a time against vectorised.

    python scripts/benchmark_throughput.py --members 1 8 64 --epochs 3            # CPU
    python scripts/benchmark_throughput.py --device cuda --members 64 512 4096     # one GPU

For each K it builds K members of the task (each with its own hyperparameters
drawn from the space and its own data order), trains them `--epochs` epochs
with `Member.train` one after another and with `vectorize.train` as one
batched model, and prints a Markdown table of member-steps/s (a member-step is
one optimizer step of one member on one batch).  A first epoch is run and not
timed, to warm up kernels and allocators.
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(task_name: str, k: int, device: torch.device) -> tuple[list[Member], Data]:
    task = load_task(task_name)
    data = Data(task.data(0)[0], device)
    members = []
    for i in range(k):
        hp = sample_space(task.space, np.random.default_rng(derive_seed(0, HPARAMS, i)))
        members.append(Member.create(task, i, hp, seed=0, device=device))
    return members, data


def rate(members: list[Member], data: Data, epochs: int, batched: bool) -> float:
    """Member-steps per second over `epochs` timed epochs (after one warm-up epoch)."""
    steps = len(range(0, len(data), members[0].batch_size))
    run = (lambda e: vectorize.train(members, data, e)) if batched else (
        lambda e: [m.train(data, e) for m in members])
    run(1)
    _sync(data.device)
    start = time.perf_counter()
    run(epochs)
    _sync(data.device)
    return len(members) * steps * epochs / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="regression1d")
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-sequential", type=int, default=1024,
                   help="skip the one-at-a-time path above this K (it only gets slower per member)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"task {args.task}, device {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, epochs {args.epochs} (+1 warm-up)\n")
    print("| K members | one at a time (member-steps/s) | vectorised (member-steps/s) | speed-up |")
    print("|---|---|---|---|")
    for k in args.members:
        members, data = build(args.task, k, device)
        seq = rate(copy.deepcopy(members), data, args.epochs, False) if k <= args.max_sequential else float("nan")
        vec = rate(members, data, args.epochs, True) if k > 1 else float("nan")
        speed = vec / seq if k > 1 and seq == seq else float("nan")
        print(f"| {k} | {seq:,.0f} | {vec:,.0f} | {speed:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
