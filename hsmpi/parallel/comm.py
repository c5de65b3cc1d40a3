"""The only module that talks MPI.

Everything else in hsmpi sees a `Comm`: a small set of named collectives that
the search loop needs.  `SerialComm` implements the same calls for one process
without importing mpi4py, so the search logic runs (and is tested) without MPI.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from hsmpi.text import clean


def _finite_or_inf(value: float) -> float:
    """NaN or inf never wins a MINLOC (MPI implementations propagate NaN through MINLOC differently)."""
    return float(value) if math.isfinite(value) else math.inf


def local_min(values: Sequence[float], indices: Sequence[int]) -> tuple[float, int]:
    """Smallest value and its index; non-finite counts as +inf, ties go to the lowest index."""
    best = (math.inf, min(indices) if len(indices) else 2**31 - 1)
    for value, index in zip(values, indices):
        candidate = (_finite_or_inf(value), int(index))
        if candidate < best:
            best = candidate
    return best


class SerialComm:
    """One process, no MPI: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    is_root = True

    def allreduce_minloc(self, values: Sequence[float], indices: Sequence[int]) -> tuple[float, int]:
        return local_min(values, indices)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        return array.copy()

    def allreduce_max(self, value: float) -> float:
        return value

    def bcast_buffer(self, buffer: np.ndarray, root: int = 0) -> None:
        pass

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def scatter(self, objs: Sequence[Any] | None, root: int = 0) -> Any:
        assert objs is not None and len(objs) == 1
        return objs[0]

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def send(self, obj: Any, dest: int) -> None:
        raise ValueError(f"no rank {dest} to send to: this is one process")

    def recv(self, source: int) -> Any:
        raise ValueError(f"no rank {source} to receive from: this is one process")

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        os._exit(code)

    def library(self) -> str:
        return "none (serial)"

    def details(self) -> dict[str, str]:
        """What `hsmpi doctor` reports about the MPI itself."""
        return {"library": self.library(), "standard": "-", "cuda_aware": "no MPI", "processor": os.uname().nodename}


class Comm(SerialComm):
    """A thin wrapper around an mpi4py communicator."""

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI
        from mpi4py.util import dtlib

        self._MPI = MPI
        self._comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self.is_root = self.rank == 0
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self._pair_dtype = dtlib.to_numpy_dtype(MPI.DOUBLE_INT)

    def allreduce_minloc(self, values: Sequence[float], indices: Sequence[int]) -> tuple[float, int]:
        """Global (min value, its index) over all ranks with one buffer Allreduce(MINLOC)."""
        value, index = local_min(values, indices)
        send = np.array([(value, index)], dtype=self._pair_dtype)
        recv = np.empty_like(send)
        self._comm.Allreduce([send, self._MPI.DOUBLE_INT], [recv, self._MPI.DOUBLE_INT], op=self._MPI.MINLOC)
        return float(recv[0]["f0"]), int(recv[0]["f1"])

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        out = np.empty_like(array)
        self._comm.Allreduce(np.ascontiguousarray(array), out, op=self._MPI.SUM)
        return out

    def allreduce_max(self, value: float) -> float:
        return float(self._comm.allreduce(value, op=self._MPI.MAX))

    def bcast_buffer(self, buffer: np.ndarray, root: int = 0) -> None:
        """In-place broadcast of one contiguous numpy buffer (no pickling)."""
        self._comm.Bcast(buffer, root=root)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._comm.bcast(obj, root=root)

    def scatter(self, objs: Sequence[Any] | None, root: int = 0) -> Any:
        return self._comm.scatter(objs, root=root)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return self._comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return self._comm.allgather(obj)

    def send(self, obj: Any, dest: int) -> None:
        """Point to point, pickled: only for hsmpi's own dicts of arrays between its ranks."""
        self._comm.send(obj, dest=dest)

    def recv(self, source: int) -> Any:
        return self._comm.recv(source=source)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(code)

    def library(self) -> str:
        """The library's own version line, made safe to store and print (Open MPI's ends in a NUL)."""
        return clean(" ".join(self._MPI.Get_library_version().splitlines()[0].split()))

    def details(self) -> dict[str, str]:
        major, minor = self._MPI.Get_version()
        return {"library": self.library(), "standard": f"{major}.{minor}", "cuda_aware": _cuda_aware(),
                "processor": clean(self._MPI.Get_processor_name())}


def _loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries this process has loaded (mpi4py opens its libmpi privately, so its
    symbols are not in the global namespace that `ctypes.CDLL(None)` searches)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libmpi" in line}
    except OSError:  # not Linux
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith("libmpi.") and os.path.exists(p))


def _cuda_aware() -> str:
    """Ask the loaded MPI library whether it moves CUDA buffers itself (Open MPI's and MPICH's extensions).

    Both answer at run time, for the library and the machine it runs on: "no"
    also when the library was built with CUDA but finds no GPU here.
    """
    import ctypes

    for path in [*_loaded_mpi_libraries(), None]:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        gpu_query = getattr(lib, "MPIX_GPU_query_support", None)  # MPICH 4+: (type 1 = CUDA, &flag)
        if gpu_query is not None:
            flag = ctypes.c_int(0)
            if gpu_query(1, ctypes.byref(flag)) == 0:
                return "yes" if flag.value else "no"
        query = getattr(lib, "MPIX_Query_cuda_support", None)  # Open MPI (mpi-ext.h); MPICH has it too
        if query is not None:
            return "yes" if query() == 1 else "no"
    return "unknown"


def world() -> SerialComm:
    """The job's communicator: MPI's COMM_WORLD when mpi4py is there, else serial."""
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return Comm(MPI.COMM_WORLD)


def mpi_handle(comm: SerialComm) -> Any:
    """The mpi4py communicator under one of ours (COMM_SELF for a serial one), for libraries that need it."""
    if isinstance(comm, Comm):
        return comm._comm
    from mpi4py import MPI

    return MPI.COMM_SELF


def as_comm(comm: Any) -> SerialComm:
    """Accept None (COMM_WORLD), one of ours, or a raw mpi4py communicator."""
    if comm is None:
        return world()
    if isinstance(comm, SerialComm):
        return comm
    return Comm(comm)
