"""hsmpi against random search at the same epoch budget, over several seeds.

Random search here is hsmpi with one session (-m 1): S members, each with its
own hyperparameters drawn from the same space, trained for M epochs from its
initial weights (member i's are the same in both runs), the one with the best
validation loss chosen.  So both methods share the task, model, initial
weights, optimizer, data split and the first S draws; only the sessions differ.

    python scripts/compare_random_search.py --task friedman1 -n 4 -S 8 -M 30 -m 6 --seeds 5

Prints a Markdown table: per seed, hsmpi's test loss (best member and the
population's average), random search's test loss of the member chosen on
validation and of the best of its S members on test (an oracle no search
can claim), and the wall time of each run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch

from hsmpi.engine.data import Data
from hsmpi.tasks import load_task, task_loss


def run(args: argparse.Namespace, seed: int, sessions: int, out: str) -> tuple[str, float]:
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    cmd = [mpirun if os.path.exists(mpirun) else "mpirun", "-n", str(args.ranks), sys.executable, "-m", "hsmpi",
           "--task", args.task, "-S", str(args.population), "-M", str(args.epochs), "-m", str(sessions),
           "--seed", str(seed), "--out", out, *(args.extra.split() if sessions > 1 else [])]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    return os.path.join(out, "results.h5"), time.perf_counter() - start


def member_test_losses(task_name: str, path: str, seed: int) -> np.ndarray:
    """The test loss of every member of the final population."""
    task = load_task(task_name)
    test = Data(task.data(seed)[2], torch.device("cpu"))
    x = torch.cat([b[0] for b in test.in_order()])
    y = torch.cat([b[1] for b in test.in_order()])
    with h5py.File(path, "r") as f:
        weights = {k: v[()] for k, v in f["population/weights"].items()}
    losses = []
    for i in range(next(iter(weights.values())).shape[0]):
        model = task.model()
        model.load_state_dict({k: torch.from_numpy(v[i]) for k, v in weights.items()})
        model.eval()
        with torch.no_grad():
            losses.append(float(task_loss(task, model(x), y)))
    return np.array(losses)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="friedman1")
    p.add_argument("-n", "--ranks", type=int, default=4)
    p.add_argument("-S", "--population", type=int, default=8)
    p.add_argument("-M", "--epochs", type=int, default=30)
    p.add_argument("-m", "--sessions", type=int, default=6)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--extra", default="", help="more hsmpi options for the Hypersearch runs, e.g. '--radius 0.3'")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            hs, hs_time = run(args, seed, args.sessions, os.path.join(tmp, f"hs{seed}"))
            rs, rs_time = run(args, seed, 1, os.path.join(tmp, f"rs{seed}"))
            with h5py.File(hs, "r") as f, h5py.File(rs, "r") as g:
                rows.append((seed, f["test/best_loss"][()], f["test/ensemble_loss"][()], g["test/best_loss"][()],
                             member_test_losses(args.task, rs, seed).min(), hs_time, rs_time))
    print(f"| seed | hsmpi best member | hsmpi population average | random search (chosen on val) "
          f"| random search (best of {args.population} on test) | hsmpi s | random s |")
    print("|---|---|---|---|---|---|---|")
    for seed, a, b, c, d, t1, t2 in rows:
        print(f"| {seed} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.4f} | {t1:.1f} | {t2:.1f} |")
    cols = np.array([r[1:5] for r in rows])
    med = np.median(cols, axis=0)
    print(f"| median | {med[0]:.4f} | {med[1]:.4f} | {med[2]:.4f} | {med[3]:.4f} | | |")
    wins = int((cols[:, 0] < cols[:, 2]).sum())
    print(f"\nhsmpi's best member beats random search's chosen member on {wins} of {len(rows)} seeds.")


if __name__ == "__main__":
    main()
