"""Which device a rank trains on, and how many CPU threads it uses."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from hsmpi.config import ConfigError


def pick_device(choice: str, local_rank: int) -> torch.device:
    """`cuda:(local_rank % GPUs)` when CUDA is there (or asked for), else the CPU.

    The node-local rank comes from an MPI shared-memory split, so one rank per
    GPU works whatever the launcher; with `--gpus-per-task` each rank sees one
    GPU and the modulo picks it.
    """
    if choice == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise ConfigError("device cuda was asked for, but torch sees no CUDA device on this node")
    if available:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def set_threads(threads: int, local_size: int) -> int:
    """Intra-op threads per rank: as asked, or the node's cores shared among its ranks."""
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(1, local_size))
    torch.set_num_threads(threads)
    return threads


# Settings that choose which vector kernels the CPU math runs, and so how its floats round.
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_kernels() -> str:
    """Which vector kernels PyTorch runs on this CPU (e.g. "AVX512"), with any setting above that pins them.

    Two processors that run different kernels round some results differently
    in the last bit, and a selection decided by that bit changes the rest of
    a run: runs agree to the bit only where this agrees (on CPU).
    """
    pinned = [f"{name}={os.environ[name]}" for name in KERNEL_SETTINGS if os.environ.get(name)]
    return ", ".join([torch.backends.cpu.get_cpu_capability(), *pinned])


def kernels_of_ranks(kernels: Sequence[str]) -> str:
    """The ranks' `cpu_kernels()` in a few words: the one they share, or each distinct one with how many
    ranks run it and the first of them."""
    distinct = list(dict.fromkeys(kernels))
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{k} on {kernels.count(k)} rank(s) from rank {kernels.index(k)}" for k in distinct)


def mixed_kernels(kernels: Sequence[str]) -> str | None:
    """What to tell a user whose ranks (their `cpu_kernels()`) run different kernels; None when they agree."""
    if len(set(kernels)) < 2:
        return None
    return (f"the ranks' CPUs run different vector kernels ({kernels_of_ranks(kernels)}), which round some "
            "results differently: on CPU a run's results then depend on which members land on which rank; pin "
            "the kernels to a level every node has (ATEN_CPU_CAPABILITY, MKL_CBWR, ONEDNN_MAX_CPU_ISA; e.g. "
            "avx2, AVX2, AVX2) in the job's environment for runs that agree")
