"""Fingerprints of runs' results: a change that must not change behaviour must not change these.

    python scripts/result_hashes.py                  # every built-in task, several settings, one process
    mpirun -n 2 python scripts/result_hashes.py      # the same runs on 2 ranks: the same hashes (layout)
    python scripts/result_hashes.py --json before.json   # also write them to a file, to compare later

Each case runs `hsmpi.run` with a fixed seed and one torch thread, then
hashes every number the results file holds about the search (losses, winners,
sources, hyperparameters, the returned and the final members' weights, test
losses), leaving out only what differs between identical runs (timings, the
MPI library, the rank count).  Same code, same seed, same thread count: same
hash, on any number of ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import hsmpi
from hsmpi.parallel.comm import world

SMALL = dict(population=8, epochs=6, sessions=3, seed=11, threads=1, export_top=0)
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "winner+elitism+holdout": dict(select="winner", elitism=True, holdout=0.25, radius=0.15),
    "perturb+shrinking": dict(sampler="perturb", radius_final=0.05, independent_init=True),
    "vectorized": dict(vectorize="on"),  # falls back to one at a time where it cannot (dropout)
}
TASKS = ("regression1d", "friedman1", "diabetes", "digits")
SKIPPED = ("history/time",)  # seconds: differ between identical runs


def fingerprint(path: Path) -> str:
    """sha256 over every dataset (and the `best` group's attributes) except timings, in name order."""
    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        for name in sorted(names):
            item = f[name]
            if not isinstance(item, h5py.Dataset) or name.startswith(SKIPPED):
                continue
            value = item[()]
            array = np.asarray([v.decode() if isinstance(v, bytes) else v for v in np.ravel(value)]
                               if item.dtype.kind == "O" else value)
            digest.update(name.encode())
            digest.update(array.tobytes() if array.dtype.kind != "U" else "\0".join(array.ravel()).encode())
        for key in sorted(f["best"].attrs):
            digest.update(f"best.{key}={f['best'].attrs[key]!r}".encode())
    return digest.hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--json", metavar="FILE", help="also write {task/case: hash} to FILE")
    args = p.parse_args()
    comm = world()
    hashes = {}
    for task in args.tasks:
        for case in args.cases:
            with tempfile.TemporaryDirectory() as tmp:
                out = comm.bcast(tmp if comm.is_root else None)
                hsmpi.run(task, comm=None, log=None, out=out, **SMALL, **CASES[case])
                if comm.is_root:
                    hashes[f"{task}/{case}"] = fingerprint(Path(out) / "results.h5")
                    print(f"{task:13s} {case:24s} {hashes[f'{task}/{case}']}", flush=True)
                comm.barrier()  # every rank is done with the folder before rank 0 removes it
    if comm.is_root and args.json:
        Path(args.json).write_text(json.dumps(hashes, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
