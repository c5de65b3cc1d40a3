"""What the parallel job costs beyond training: broadcast against raw MPI, hsmpi against a plain loop.

    mpirun -n 2 python scripts/benchmark_overhead.py                    # everything
    mpirun -n 2 python scripts/benchmark_overhead.py --skip-e2e --max-params 1e7
    mpirun -n 2 python scripts/benchmark_overhead.py --skip-bcast -M 30 120 --repeats 7

Part 1 (broadcast sweep): a synthetic model of N parameters (N = 1e3 ... 1e8)
with SGD momentum state; the time to share its state the way hsmpi does
(header + pack into the reused flat buffer + one `Bcast` + load into a
member on every other rank) against a raw `Bcast` of a numpy buffer of the
same size in the same job.
Part 2 (end to end): for each built-in task, `hsmpi.run` with S = K x ranks
members (K per rank) against K plain PyTorch training loops per rank (same
model, optimizer, batch size and epochs; each rank running its own at the
same time, as hsmpi's ranks do), both timed inside the same job; the ratio
is hsmpi's time over the plain loops' time (median of alternated repeats).
Rank 0 prints Markdown tables.  Each task is warmed up first (one plain
epoch), so one-time imports are charged to neither side.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

import hsmpi
from hsmpi.algorithm.space import sample_space
from hsmpi.algorithm.streams import DATA_ORDER, HPARAMS, derive_seed, init_seed
from hsmpi.cli import interval_arg
from hsmpi.config import Config
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import Comm
from hsmpi.tasks import load_task, task_loss


class Synthetic:
    """A model of about n parameters in four tensors, SGD with momentum."""

    space = {"lr": hsmpi.LogUniform(1e-3, 1e-1)}

    def __init__(self, n: int) -> None:
        self.n = n

    def model(self) -> torch.nn.Module:
        module = torch.nn.Module()
        for i in range(4):
            module.register_parameter(f"w{i}", torch.nn.Parameter(torch.zeros(max(1, self.n // 4))))
        return module

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], momentum=0.9)


def _median_time(comm: Comm, fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        comm.barrier()
        start = MPI.Wtime()
        fn()
        comm.barrier()
        times.append(MPI.Wtime() - start)
    return float(np.median(times))


def _sweep_one(comm: Comm, n: int) -> tuple[int, int, float, float, float]:
    """(n, bytes, raw Bcast, hsmpi's Bcast alone, hsmpi's whole share) for a model of n parameters."""
    cpu = torch.device("cpu")
    member = Member.create(Synthetic(n), comm.rank, {"lr": 0.01}, seed=0, device=cpu)
    for p in member.model.parameters():
        p.grad = torch.ones_like(p)
    member.optimizer.step()  # creates the momentum buffers: the state is 2 x n floats
    buffer = flatstate.Buffer(cpu)
    header = member.header()
    raw = np.zeros(header.nbytes, dtype=np.uint8)

    def share() -> None:
        head = comm.bcast(member.header() if comm.rank == 0 else None)
        buffer.ensure(head.nbytes)
        array = buffer.array(head.nbytes)
        if comm.rank == 0:
            member.pack(head, buffer.device_view())
        comm.bcast_buffer(array)
        if comm.rank != 0:
            member.adopt(head, buffer.device_view(), {"lr": 0.02}, buffer.host)

    reps = 20 if n <= 10**6 else 5 if n <= 10**7 else 3
    t_share = _median_time(comm, share, reps)
    t_bcast_only = _median_time(comm, lambda: comm.bcast_buffer(buffer.array(header.nbytes)), reps)
    t_raw = _median_time(comm, lambda: comm.bcast_buffer(raw), reps)
    return n, header.nbytes, t_raw, t_bcast_only, t_share


def bcast_sweep(comm: Comm, max_params: float) -> None:
    rows = [_sweep_one(comm, 10**e) for e in range(3, int(math.log10(max_params)) + 1)]
    if comm.is_root:
        print(f"\n### Broadcast of a member's state, {comm.size} ranks\n")
        print("| parameters | bytes (weights + momentum) | raw numpy Bcast | hsmpi's Bcast of its buffer "
              "| hsmpi share (header + pack + Bcast + load) | Bcast / raw | share / raw |")
        print("|---|---|---|---|---|---|---|")
        for n, nbytes, raw_t, only, share_t in rows:
            print(f"| {n:.0e} | {nbytes / 2**20:,.2f} MiB | {raw_t * 1e3:.3f} ms | {only * 1e3:.3f} ms "
                  f"| {share_t * 1e3:.3f} ms | {only / raw_t:.2f} | {share_t / raw_t:.2f} |")


def plain_loops(task_name: str, members: list[int], epochs: int, seed: int, batch_size: int) -> float:
    """K plain training loops (this rank's members' first hyperparameters, initial weights and data
    orders), one after another, then one validation and one test pass each."""
    task = load_task(task_name)
    independent = Config().independent_init  # the weights hsmpi.run's members start from
    start = time.perf_counter()
    train, val, test = (Data(d, torch.device("cpu")) for d in task.data(seed))
    for i in members:
        hp = sample_space(task.space, np.random.default_rng(derive_seed(seed, HPARAMS, i)))
        # Member i's own initial weights and data order, so that both sides train the same numbers (on
        # CPU, other weights can mean other amounts of slow denormal arithmetic: 5-10% either way).
        torch.manual_seed(init_seed(seed, i, independent))
        model = task.model()
        opt = task.optimizer(model.parameters(), hp)
        gen = torch.Generator().manual_seed(derive_seed(seed, DATA_ORDER, i))
        for _ in range(epochs):
            model.train()
            for x, y in train.shuffled(batch_size, gen):
                opt.zero_grad(set_to_none=True)
                loss = task_loss(task, model(x), y)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            for split in (val, test):
                for x, y in split.in_order():
                    task_loss(task, model(x), y)
    return time.perf_counter() - start


def _hsmpi_once(comm: Comm, task_name: str, population: int, epochs: int, sessions: int,
                options: dict[str, Any]) -> tuple[float, float]:
    """One hsmpi.run in a fresh folder: (wall seconds, rank 0's share not training or validating)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = comm.bcast(tmp)
        comm.barrier()
        start = MPI.Wtime()
        result = hsmpi.run(task_name, comm=MPI.COMM_WORLD, population=population, epochs=epochs,
                           sessions=sessions, threads=1, out=out, log=None, **options)
        comm.barrier()
        wall = MPI.Wtime() - start
        share = overhead_share(result.path) if comm.is_root else math.nan
        comm.barrier()  # nobody deletes the folder before rank 0 has read the results
    return wall, share


def end_to_end(comm: Comm, tasks: list[str], per_rank: list[int], epochs_list: list[int], sessions: int,
               repeats: int, options: dict[str, Any]) -> None:
    rows = []
    for task_name in tasks:
        # Warm up: imports (scikit-learn, torch's lazy optimizer machinery) are paid once per process by
        # any script; pay them here so neither side of the comparison is charged with them.
        plain_loops(task_name, [comm.rank], 1, 0, 64)
        for epochs in epochs_list:
            for k in per_rank:
                population = k * comm.size
                mine = list(range(comm.rank * k, (comm.rank + 1) * k))
                hs, plain, shares = [], [], []
                for _ in range(repeats):  # alternated, so that a slow spell of the machine hits both sides
                    wall, share = _hsmpi_once(comm, task_name, population, epochs, sessions, options)
                    hs.append(wall)
                    shares.append(share)
                    comm.barrier()
                    plain.append(comm.allreduce_max(plain_loops(task_name, mine, epochs, 0, 64)))
                ratios = np.array(hs) / np.array(plain)
                rows.append((task_name, epochs, k, population, float(np.median(plain)), float(np.median(hs)),
                             float(np.median(ratios)), float(min(hs) / min(plain)), float(np.median(shares))))
    if comm.is_root:
        extra = "".join(f", {k}={v}" for k, v in options.items())
        print(f"\n### hsmpi against plain PyTorch loops, {comm.size} ranks, m={sessions}, 1 thread per rank, "
              f"median of {repeats} alternated runs{extra}\n")
        print("| task | M | K per rank | S | plain loops (slowest rank, median) | hsmpi.run (median) "
              "| ratio (median of pairs) | ratio of the fastest runs | hsmpi time not training or validating |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, epochs, k, s, tp, th, ratio, best, share in rows:
            print(f"| {name} | {epochs} | {k} | {s} | {tp:.3f} s | {th:.3f} s | {ratio:.3f} | {best:.3f} "
                  f"| {share:.1%} |")


def overhead_share(path: str | None) -> float:
    """Fraction of the run's wall time that rank 0 spent outside training and validation."""
    import h5py

    assert path is not None
    with h5py.File(path, "r") as f:
        work = float(np.nansum(f["history/time/train"][()][:, 0]) + np.nansum(f["history/time/val"][()][:, 0]))
        return 1.0 - work / float(f.attrs["wall_seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-params", type=float, default=1e8)
    p.add_argument("--tasks", nargs="+", default=["regression1d", "friedman1", "diabetes", "digits"])
    p.add_argument("--per-rank", type=int, nargs="+", default=[1, 4])
    p.add_argument("-M", "--epochs", type=int, nargs="+", default=[30], help="M (several: one row each)")
    p.add_argument("--repeats", type=int, default=5, help="alternated hsmpi / plain runs per row (median)")
    p.add_argument("--checkpoint-interval", type=interval_arg, default=None,
                   help="hsmpi's --checkpoint-interval for the end-to-end runs (default: hsmpi's own default)")
    p.add_argument("-m", "--sessions", type=int, default=6)
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) on both sides: training time no longer depends on how "
                        "many denormal floats a member's trajectory makes (5-10%% either way on this CPU)")
    p.add_argument("--skip-bcast", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args()
    comm = Comm(MPI.COMM_WORLD)
    torch.set_num_threads(1)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        p.error("--flush-denormal: this CPU cannot flush denormals")
    if comm.is_root:
        print(f"benchmark_overhead: {comm.size} ranks, {comm.library()}, torch {torch.__version__}"
              f"{', denormals flushed on both sides' if args.flush_denormal else ''}")
    if not args.skip_bcast:
        bcast_sweep(comm, args.max_params)
    if not args.skip_e2e:
        options: dict[str, Any] = {}
        if args.checkpoint_interval is not None:
            options["checkpoint_interval"] = args.checkpoint_interval
        end_to_end(comm, args.tasks, args.per_rank, args.epochs, args.sessions, args.repeats, options)


if __name__ == "__main__":
    main()
