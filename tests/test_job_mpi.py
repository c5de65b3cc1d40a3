"""Whole runs on real MPI ranks, in process: `mpirun -n N python -m pytest --with-mpi -m mpi tests`.

The layout never changes a result: a run on every rank equals the same run in
one process, and a run stopped on one layout resumes on another to the same
bytes.  Sub-communicators give several layouts inside one mpirun.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import hsmpi
from hsmpi.engine import signals
from hsmpi.engine.job import Stopped
from hsmpi.parallel.comm import SerialComm

from tasks_for_tests import Coarse, ItemData, NegLoss, Scheduled, SignalsItself, Tiny, TinyAdam

pytestmark = pytest.mark.mpi(min_size=2)

BASE = dict(epochs=6, sessions=3, seed=4, threads=1, export_top=0, log=None)


def _world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _same_files(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        for key in ("history/train_loss", "history/val_loss", "history/winner", "history/sources",
                    "test/best_loss", "test/ensemble_loss", "test/ensemble_val_loss", "test/member_val_cv",
                    "test/returned_loss"):
            assert np.array_equal(f[key][()], g[key][()], equal_nan=True), key
        assert f["test/returned"][()] == g["test/returned"][()]
        for key in ("test/greedy_loss", "test/greedy_val_loss", "test/average_members", "test/average_counts"):
            assert (key in f) == (key in g), key
            if key in f:
                assert np.array_equal(f[key][()], g[key][()]), key
        for group in ("population/weights", "history/hparams", "best/weights"):
            for name in f[group]:
                assert np.array_equal(f[f"{group}/{name}"][()], g[f"{group}/{name}"][()]), f"{group}/{name}"
        assert dict(f["best"].attrs) == dict(g["best"].attrs)


LAYOUT_CASES = {
    "map-style-data-with-a-worker": (ItemData(), dict(select="truncation", workers=1)),
    "scheduled": (Scheduled(), dict(select="truncation")),
    "metric-objective-maximised": (NegLoss(), dict(select="truncation", elitism=True)),
    "winner-urs": (Tiny(), dict(select="winner")),
    "truncation-perturb": (Tiny(), dict(select="truncation", sampler="perturb")),
    "truncation-tpe": (TinyAdam(), dict(select="truncation", sampler="tpe", candidates=8)),
    "independent-init": (Tiny(), dict(select="winner", independent_init=True)),
    "holdout-elitism": (TinyAdam(), dict(select="truncation", holdout=0.4, elitism=True)),
    "returns-average": (TinyAdam(), dict(select="truncation", returns="average")),
    "smooth": (Tiny(), dict(select="truncation", smooth=2)),
    "islands": (TinyAdam(), dict(select="truncation", islands=3, migrate_every=1)),
    "returns-auto-top": (NegLoss(), dict(select="truncation", returns="auto", average_top=3)),
    "returns-greedy": (Tiny(), dict(select="truncation", returns="greedy")),
    # out of bag: each bag's selection on its resample, as in bag, and its step judged on the rows left out;
    # half the weight from one selection on the whole split
    "returns-greedy-bags": (Tiny(), dict(select="truncation", returns="greedy", greedy_bags=3,
                                         greedy_stop="out-of-bag", greedy_whole=True)),
    "rungs": (TinyAdam(), dict(select="truncation", prune_at=0.5)),
    "rungs-islands": (Tiny(), dict(select="winner", islands=2, prune_at=0.5, prune_fraction=0.5)),
    "plateau": (TinyAdam(), dict(select="truncation", plateau=0.3, epochs=9)),
    "ties-by-loss": (Coarse(), dict(select="truncation", tie_break="loss")),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_a_run_on_every_rank_equals_the_same_run_in_one_process(mpi_tmp_path: Path, case: str) -> None:
    world = _world()
    task, options = LAYOUT_CASES[case]
    options = dict(population=8, **{**BASE, **options})
    mine = hsmpi.run(task, comm=world, out=str(mpi_tmp_path / f"world-{case}"), **options)
    returned = mine.returned_model()  # an average: each rank reads it from the results file (moved below)
    world.Barrier()
    if world.rank == 0:  # one process, the same seed: rank 0 alone, while the others wait
        alone = hsmpi.run(task, comm=SerialComm(), out=str(mpi_tmp_path / f"alone-{case}"), **options)
        assert (alone.test_loss, alone.best_member, alone.best_session, alone.best_val_loss, alone.returned,
                alone.averaged) == (mine.test_loss, mine.best_member, mine.best_session, mine.best_val_loss,
                                    mine.returned, mine.averaged)
        _same_files(mpi_tmp_path / f"world-{case}" / "results.h5", mpi_tmp_path / f"alone-{case}" / "results.h5")
        # each rank wrote its members' weights to its own file; results.h5 reads them, also once moved
        moved = mpi_tmp_path / "elsewhere" / case
        shutil.move(mpi_tmp_path / f"world-{case}", moved)
        parts = sorted(p.name for p in (moved / "population").glob("*/rank*.h5"))
        assert parts == [f"rank{r:05d}.h5" for r in range(world.size)]
        _same_files(moved / "results.h5", mpi_tmp_path / f"alone-{case}" / "results.h5")
        with h5py.File(moved / "results.h5", "r") as f:
            assert all(f[f"population/weights/{name}"].is_virtual for name in f["population/weights"])
        with h5py.File(mpi_tmp_path / f"alone-{case}" / "results.h5", "r") as f:
            # the run really explored: more than one distinct learning rate (and batch size) was tried
            assert len(np.unique(f["history/hparams/lr"][()])) > 4
            if "batch_size" in f["history/hparams"]:
                assert len(np.unique(f["history/hparams/batch_size"][()])) > 1
    world.Barrier()
    # every rank returns the same model (an average: each rank reads it from the results file)
    for model in (mine.best_model, returned):
        flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
        assert all(np.array_equal(flat, other) for other in world.allgather(flat))


def test_one_member_per_rank_gives_the_bits_of_one_process(mpi_tmp_path: Path) -> None:
    """`auto` batches MLPs on the CPU: a rank with one member trains it as a batched model of one, whose bits
    are those of a stack of all S (TinyAdam's 16 -> 1 output layer is what torch computes with another
    kernel for a single matrix than for a batch)."""
    world = _world()
    options = dict(population=world.size, select="winner", **BASE)
    hsmpi.run(TinyAdam(), comm=world, out=str(mpi_tmp_path / "one-each"), **options)
    world.Barrier()
    if world.rank == 0:
        alone = hsmpi.run(TinyAdam(), comm=SerialComm(), out=str(mpi_tmp_path / "one-each-alone"), **options)
        _same_files(mpi_tmp_path / "one-each" / "results.h5", mpi_tmp_path / "one-each-alone" / "results.h5")
        off = hsmpi.run(TinyAdam(), comm=SerialComm(), out=str(mpi_tmp_path / "one-each-off"),
                        **{**options, "vectorize": "off"})
        assert off.test_loss != alone.test_loss, "the batched path trained them (its own dropout masks)"
    world.Barrier()


@pytest.mark.parametrize("select", ["truncation", "winner"])
@pytest.mark.parametrize("task", [TinyAdam(), Tiny()], ids=["adam", "sgd-momentum"])
def test_stopped_on_every_rank_resumed_on_half_of_them_and_on_one(mpi_tmp_path: Path, task: object,
                                                                   select: str) -> None:
    """Stop after session 1 on all ranks; resume on the first half (a sub-communicator) to session 2, then
    on rank 0 alone to the end: the same bytes as an uninterrupted run."""
    world = _world()
    name = f"{type(task).__name__}-{select}"
    out, reference = mpi_tmp_path / f"resumed-{name}", mpi_tmp_path / f"whole-{name}"
    options = dict(population=2 * world.size, select=select, **BASE)
    with pytest.raises(Stopped, match="after session 1/3"):
        hsmpi.run(task, comm=world, out=str(out), stop_after=1, **options)
    half = world.Split(0 if world.rank < world.size // 2 else 1, world.rank)
    if world.rank < world.size // 2:
        with pytest.raises(Stopped, match="after session 2/3"):
            hsmpi.run(task, comm=half, out=str(out), resume="auto", stop_after=2, **options)
    half.Free()
    world.Barrier()
    if world.rank == 0:
        hsmpi.run(task, comm=SerialComm(), out=str(out), resume="auto", **options)
        hsmpi.run(task, comm=SerialComm(), out=str(reference), **options)
        _same_files(out / "results.h5", reference / "results.h5")
    world.Barrier()


@pytest.mark.parametrize("select", ["winner", "truncation"])
def test_resumed_in_one_process_then_finished_on_every_rank(mpi_tmp_path: Path, select: str) -> None:
    world = _world()
    out, reference = mpi_tmp_path / f"grow-{select}", mpi_tmp_path / f"grow-whole-{select}"
    options = dict(population=2 * world.size, select=select, elitism=True, holdout=0.25, **BASE)
    if world.rank == 0:
        with pytest.raises(Stopped):
            hsmpi.run(TinyAdam(), comm=SerialComm(), out=str(out), stop_after=2, **options)
    world.Barrier()
    hsmpi.run(TinyAdam(), comm=world, out=str(out), resume="auto", **options)
    hsmpi.run(TinyAdam(), comm=world, out=str(reference), **options)
    if world.rank == 0:
        _same_files(out / "results.h5", reference / "results.h5")
    world.Barrier()


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_session(mpi_tmp_path: Path,
                                                                      signum: signal.Signals) -> None:
    """The handler only notes the signal; at the session's end every rank agrees and stops, checkpointed."""
    world = _world()
    out = mpi_tmp_path / f"signal-{signum.name}"
    signals.install()
    try:
        with pytest.raises(Stopped, match=f"stopped by {signum.name} after session 1/3") as stop:
            hsmpi.run(SignalsItself(signum, rank=world.size - 1), comm=world, out=str(out),
                      population=2 * world.size, **BASE)
    finally:
        signals.uninstall()
    assert stop.value.signum == signum and signals.requested() == 0
    if world.rank == 0:
        with h5py.File(out / "checkpoint.h5", "r") as f:
            assert f.attrs["next_session"] == 1
    world.Barrier()
