"""`python -m hsmpi doctor`: what a new cluster gives hsmpi (run it under mpirun like a job)."""

from __future__ import annotations

import os
import sys
from typing import Any

from hsmpi import __version__
from hsmpi.parallel.comm import SerialComm
from hsmpi.text import say


def _rank_facts(comm: SerialComm) -> dict[str, Any]:
    import torch

    from hsmpi.engine.device import cpu_kernels, pick_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    return {"rank": comm.rank, "host": os.uname().nodename, "local_rank": comm.local_rank,
            "local_size": comm.local_size, "pid": os.getpid(), "gpus": count, "gpu_names": names,
            "device": str(pick_device("auto", comm.local_rank)),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"), "threads": torch.get_num_threads(),
            "kernels": cpu_kernels()}


def doctor(comm: SerialComm) -> int:
    """Gather every rank's view to rank 0 and print it; exit status 0."""
    facts = comm.gather(_rank_facts(comm))
    if not comm.is_root:
        return 0
    assert facts is not None
    import h5py
    import numpy
    import torch

    from hsmpi.engine.device import mixed_kernels

    mpi = comm.details()
    locking = os.environ.get("HDF5_USE_FILE_LOCKING", "")
    lines = [
        f"hsmpi {__version__} | Python {sys.version.split()[0]} | torch {torch.__version__} | numpy "
        f"{numpy.__version__} | h5py {h5py.version.version} (HDF5 {h5py.version.hdf5_version})",
        f"MPI: {mpi['library']} (standard {mpi['standard']}) | {comm.size} ranks on "
        f"{len({f['host'] for f in facts})} node(s) | CUDA-aware MPI: {mpi['cuda_aware']} "
        "(hsmpi stages GPU state through pinned host memory either way)",
        f"torch CUDA: {torch.version.cuda or 'none'} | HDF5 file locking: "
        f"{'off (HDF5_USE_FILE_LOCKING=' + locking + ')' if locking.upper() == 'FALSE' else 'on'}"
        " (turn it off on parallel file systems that do not support it)",
        "",
        "| rank | host | local rank | GPUs seen | CUDA_VISIBLE_DEVICES | hsmpi would use | torch threads "
        "| CPU kernels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in facts:
        gpus = f"{f['gpus']} ({', '.join(f['gpu_names'])})" if f["gpus"] else "0"
        lines.append(f"| {f['rank']} | {f['host']} | {f['local_rank']} of {f['local_size']} | {gpus} | "
                     f"{f['visible']} | {f['device']} | {f['threads']} | {f['kernels']} |")
    warnings = []
    per_host: dict[str, list[str]] = {}
    for f in facts:
        per_host.setdefault(f["host"], []).append(f["device"])
    for host, devices in per_host.items():
        cuda = [d for d in devices if d.startswith("cuda")]
        if cuda and len(set(cuda)) < len(cuda):
            warnings.append(f"on {host}, {len(cuda)} ranks share {len(set(cuda))} GPU(s): fine for small "
                            "models (or use --members-per-rank with --vectorize), slow for large ones")
    mixed = mixed_kernels([f["kernels"] for f in facts])
    if mixed:
        warnings.append(mixed)
    lines += [f"warning: {w}" for w in warnings]
    say("\n".join(lines))
    return 0
