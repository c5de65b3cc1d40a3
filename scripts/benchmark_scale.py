"""State at scale: each rank's peak memory, checkpoint time and bytes on disk, against plain PyTorch.

    python scripts/benchmark_scale.py                                # the sweep: 1e5..4e7 parameters, S = 2..16
    python scripts/benchmark_scale.py --params 4e7 --population 8    # one case
    python scripts/benchmark_scale.py --params 1e8 --population 2 4 --ranks 2 --epochs 2

Each case is one `mpirun -n RANKS` run of this script's worker: `hsmpi.run` on
an MLP with that many parameters (two hidden layers, Adam, 512 training
items), S members, one-epoch sessions (-M = -m = --epochs), a checkpoint
after every session, one torch thread per rank.  It reports per rank:

- peak RSS (`ru_maxrss`) against a plain PyTorch process (this script with
  `--plain`) that builds the same number of members with their Adam state
  and takes one step each: hsmpi's overhead per member held;
- the checkpoint seconds the run saw at the session boundaries (`visible`,
  the results file's `history/time/checkpoint`), the slowest rank's shard
  write in the background (`background`, from the session lines), and a raw
  h5py write plus fsync of the same bytes on every rank at once (`raw`);
- the bytes of one session's checkpoint generation (the shards of the one
  before the last, whose background write the session lines report and the
  raw write repeats), of the last one (every final state: no member copies
  another after the last session) and of the results (results.h5 and the
  population files).

Cases that would need more than 60% of this machine's memory are skipped.
Numbers and the machine they ran on go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
IN, ITEMS, BATCH = 64, 512, 64


def hidden_for(params: float) -> int:
    """The hidden width h whose MLP (IN -> h -> h -> 1) has about `params` parameters."""
    a, b, c = 1.0, IN + 3.0, 1.0 - params  # h^2 + (IN + 3) h + 1 = params
    return max(4, int(round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))))


def build(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(IN, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


class ScaleTask:
    """An MLP regression of `hidden` units per layer on synthetic data (the same on every rank)."""

    def __init__(self, hidden: int) -> None:
        from hsmpi.algorithm.space import LogUniform
        self.hidden = hidden
        self.space = {"lr": LogUniform(1e-4, 1e-2)}

    def data(self, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(ITEMS + 128, IN, generator=g)
        y = x[:, :1] * 0.5 + torch.sin(x[:, 1:2])
        split = lambda a, b: torch.utils.data.TensorDataset(x[a:b], y[a:b])  # noqa: E731
        return split(0, ITEMS), split(ITEMS, ITEMS + 64), split(ITEMS + 64, ITEMS + 128)

    def model(self) -> torch.nn.Module:
        return build(self.hidden)

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=hp["lr"])


def peak_rss() -> int:
    """This process's peak resident memory in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def plain(hidden: int, members: int) -> None:
    """One plain process holding `members` models with their Adam state after one step each."""
    torch.set_num_threads(1)
    x, y = torch.randn(BATCH, IN), torch.randn(BATCH, 1)
    held = []
    for _ in range(members):
        model = build(hidden)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        held.append((model, opt))
    print(json.dumps({"peak_rss": peak_rss()}))


def _bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def worker(hidden: int, population: int, epochs: int, out: str, background: bool, select: str) -> None:
    """One hsmpi run on every rank, then a raw write of the same bytes; rank 0 prints the figures."""
    import hsmpi
    from hsmpi.io import checkpoint
    from hsmpi.parallel.comm import world

    comm = world()
    lines: list[str] = []
    hsmpi.run(ScaleTask(hidden), comm=comm, log=lines.append, out=out, population=population, epochs=epochs,
              sessions=epochs, checkpoint_interval=0, threads=1, export_top=0, checkpoint_async=background,
              select=select)
    rss = peak_rss()
    # The generation before the last (a session's, written in the background while the next one trained,
    # as the session lines report) is what the raw write repeats; the last one holds every final state.
    indices = None
    if comm.is_root:
        indices = [checkpoint.shard_index(checkpoint.read(os.path.join(out, name)))
                   for name in (checkpoint.BACKUP, checkpoint.LATEST) if os.path.exists(os.path.join(out, name))]
    indices = comm.bcast(indices)
    index = indices[0]
    mine = sum(e["nbytes"] for e in index["states"].values()
               if e["file"] == checkpoint.shard_file(index["generation"], comm.rank))
    comm.barrier()
    start = time.perf_counter()
    if mine:
        path = os.path.join(out, f"raw-{comm.rank}.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.ones(mine, dtype=np.uint8))
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.unlink(path)
    raw = time.perf_counter() - start
    gathered = comm.gather((rss, raw))
    if not comm.is_root:
        return
    assert gathered is not None
    with h5py.File(os.path.join(out, "results.h5"), "r") as f:
        visible = f["history/time/checkpoint"][()]  # (sessions, ranks)
        train = f["history/time/train"][()]
    written = [float(x) for x in re.findall(r"written in ([0-9.]+) in the background", "\n".join(lines))]
    folder = Path(out)
    on_disk = [_bytes_in(folder / checkpoint.GENERATIONS / i["generation"]) for i in indices]
    print(json.dumps({
        "peak_rss": [r for r, _ in gathered], "raw_write": max(w for _, w in gathered),
        "visible": float(np.max(visible, axis=1).mean()), "train": float(np.max(train, axis=1).mean()),
        "background": float(np.mean(written)) if written else 0.0,
        "checkpoint_bytes": on_disk[0], "last_checkpoint_bytes": on_disk[-1],
        "results_bytes": (folder / "results.h5").stat().st_size + _bytes_in(folder / "population"),
    }))


def _run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _mpirun(ranks: int) -> list[str]:
    exe = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or "mpirun"
    return [exe, "-n", str(ranks)]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", nargs="+", type=float, default=[1e5, 1e6, 1e7, 4e7])
    p.add_argument("--population", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="-M = -m: one-epoch sessions")
    p.add_argument("--sync", action="store_true", help="also run each case with --no-checkpoint-async")
    p.add_argument("--select", default="truncation", choices=["truncation", "winner"],
                   help="hsmpi's --select (truncation: many distinct states per checkpoint; winner: one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    p.add_argument("--members", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--background", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        return plain(args.hidden, args.members)
    if args.worker:
        return worker(args.hidden, args.members, args.epochs, args.out, bool(args.background), args.select)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"# {args.ranks} ranks, {os.cpu_count()} CPUs, {memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"-M = -m = {args.epochs}, --checkpoint-interval 0, --select {args.select}, one thread per rank")
    print("| parameters | S | per rank | peak RSS per rank (GB) | plain PyTorch (GB) | worst / plain | rank 0 / "
          "others | train s/session | checkpoint visible s | background s | raw write s | checkpoint GB | "
          "last checkpoint GB | results GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for params in args.params:
        hidden = hidden_for(params)
        count = sum(t.numel() for t in build(hidden).parameters())
        for population in args.population:
            per_rank = -(-population // args.ranks)
            if per_rank * count * 4 * 5 * args.ranks > 0.6 * memory:  # weights, grads, Adam, copies
                print(f"| {count:.1e} | {population} | {per_rank} | skipped: needs more memory than this "
                      "machine has | | | | | | | | | | |")
                continue
            base = _run_json([sys.executable, __file__, "--plain", "--hidden", str(hidden), "--members",
                              str(per_rank)], timeout=1800)
            for background in ([1, 0] if args.sync else [1]):
                with tempfile.TemporaryDirectory(prefix="hsmpi-scale-") as out:
                    got = _run_json([*_mpirun(args.ranks), sys.executable, __file__, "--worker", "--hidden",
                                     str(hidden), "--members", str(population), "--epochs", str(args.epochs),
                                     "--out", out, "--background", str(background), "--select", args.select],
                                    timeout=3600)
                rss = got["peak_rss"]
                others = max(rss[1:]) if len(rss) > 1 else rss[0]
                label = "" if background else " (in line)"
                print(f"| {count:.1e} | {population}{label} | {per_rank} | {' / '.join(_gb(r) for r in rss)} | "
                      f"{_gb(base['peak_rss'])} | {max(rss) / base['peak_rss']:.2f} | {rss[0] / others:.2f} | "
                      f"{got['train']:.2f} | {got['visible']:.3f} | {got['background']:.2f} | "
                      f"{got['raw_write']:.2f} | {_gb(got['checkpoint_bytes'])} | "
                      f"{_gb(got['last_checkpoint_bytes'])} | {_gb(got['results_bytes'])} |",
                      flush=True)


if __name__ == "__main__":
    main()
