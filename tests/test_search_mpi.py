"""The search loop on real MPI ranks, in process: `mpirun -n N python -m pytest --with-mpi -m mpi tests`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsmpi.algorithm.plan import BEST_EVER
from hsmpi.config import Config
from hsmpi.engine import population
from hsmpi.engine.member import Member
from hsmpi.engine.search import Search, SessionEnd, run_sessions
from hsmpi.io import hdf5
from hsmpi.parallel import flatstate

from tasks_for_tests import AllDiverge, Diverging, Tiny, TinyAdam

pytestmark = pytest.mark.mpi(min_size=2)


def _comm():  # noqa: ANN202
    from mpi4py import MPI

    from hsmpi.parallel.comm import Comm

    return Comm(MPI.COMM_WORLD)


def _search(task: object, **options: object) -> Search:
    comm = _comm()
    out = str(options.pop("out", "never-written"))  # these tests run sessions only: no file is written
    options = {"select": "winner", **options}  # these tests check the paper's rule unless told otherwise
    config = Config(task="test", out=out, threads=1, **options)  # type: ignore[arg-type]
    return Search.start(population.prepare(config, task, comm, log=lambda _: None))


def _flat(member: Member) -> tuple[bytes, dict]:
    header = member.header()
    buf = flatstate.Buffer(torch.device("cpu"))
    buf.ensure(header.nbytes)
    member.pack(header, buf.device_view())
    return buf.array(header.nbytes).tobytes(), header.scalars


@pytest.mark.parametrize("task", [TinyAdam(), Tiny()], ids=["adam", "sgd-momentum"])
def test_after_a_session_everyone_holds_the_winner_state_and_own_new_hparams(task: object) -> None:
    comm = _comm()
    search = _search(task, population=2 * comm.size, epochs=4, sessions=2, seed=3)
    pop = search.population
    hp_before = {m.index: dict(m.hp) for m in pop.members}
    train = pop.train(search.schedule[0])
    val = search.evaluate(train)
    value, winner = comm.allreduce_minloc(val.loss, pop.indices)
    owner = pop.owner(winner)
    winner_state = comm.bcast(_flat(pop.local[winner]) if comm.rank == owner else None, root=owner)
    winner_hp = comm.bcast(pop.local[winner].hp if comm.rank == owner else None, root=owner)

    plan = search.select(0, train, val)
    search.share(0, plan)
    for m in pop.members:  # step 4 alone: the donor's state, still the member's own values
        assert _flat(m) == winner_state, f"member {m.index} does not hold the winner's exact state"
        assert m.hp == hp_before[m.index]
    search.resample(plan)

    all_val = np.concatenate(comm.allgather(val.loss))
    assert winner == int(np.argmin(all_val)) and value == all_val.min()
    new_hps = comm.bcast(search.hparams if comm.is_root else None)
    for m in pop.members:
        assert _flat(m) == winner_state, "new hyperparameters must keep the weights and optimizer state"
        assert m.hp == new_hps[m.index]
        group = m.optimizer.param_groups[0]
        assert group["lr"] == m.hp["lr"], "the new learning rate must win over the donor's"
        if m.index == winner:
            assert m.hp == winner_hp == hp_before[winner]
        else:
            assert m.hp != hp_before[m.index]
    # the members' optimizers are distinct objects with distinct tensors
    ptrs = [t.data_ptr() for m in pop.members for s in m.optimizer.state.values()
            for t in s.values() if isinstance(t, torch.Tensor) and t.numel() > 1]
    assert len(ptrs) == len(set(ptrs))


def test_minloc_never_picks_nan_and_ties_go_to_lowest_index() -> None:
    comm = _comm()
    r = comm.rank
    assert comm.allreduce_minloc([math.nan if r == 0 else 1.0 + r], [r]) == (2.0, 1)
    assert comm.allreduce_minloc([0.5], [r]) == (0.5, 0)
    assert comm.allreduce_minloc([math.inf, 0.25], [2 * r, 2 * r + 1]) == (0.25, 1)
    value, index = comm.allreduce_minloc([math.nan], [r])
    assert value == math.inf and index == 0
    last = comm.size - 1
    assert comm.allreduce_minloc([-1.0 if r == last else math.nan], [r]) == (-1.0, last)


def test_bcast_buffer_moves_bytes_from_any_root() -> None:
    comm = _comm()
    for root in range(comm.size):
        data = np.arange(1000, dtype=np.uint8) if comm.rank == root else np.zeros(1000, np.uint8)
        comm.bcast_buffer(data, root=root)
        assert np.array_equal(data, np.arange(1000, dtype=np.uint8))


def test_diverged_members_never_win_and_are_replaced() -> None:
    comm = _comm()
    search = _search(Diverging(), population=4 * comm.size, epochs=3, sessions=3, seed=1)
    assert run_sessions(search, []) is None
    if comm.is_root:
        h = search.history
        for k in range(3):
            assert np.isfinite(h.val_loss[k][h.winner[k]])
        assert any(not np.isfinite(v).all() for v in h.val_loss), "the test task should make someone diverge"


def test_all_diverged_restarts_from_best_state() -> None:
    comm = _comm()
    search = _search(AllDiverge(), population=comm.size, epochs=2, sessions=2, seed=0)
    run_sessions(search, [_StopAfterFirst()])
    if comm.is_root:
        assert "diverged" in search.history.note[0]
        assert (search.history.sources[0] == BEST_EVER).all()
    # everyone restarted from the initial (shared) weights, which are finite
    for m in search.population.members:
        assert all(torch.isfinite(p).all() for p in m.model.parameters())


class _StopAfterFirst:
    def session_ended(self, search: Search, end: SessionEnd) -> None:
        end.stop = -1


def test_the_mpi_library_string_goes_into_hdf5_and_back_as_the_library_says_it(mpi_tmp_path) -> None:  # noqa: ANN001
    """Whatever this MPI returns (Open MPI ends its version in a NUL) is stored and read back cleaned."""
    import h5py
    from mpi4py import MPI

    from hsmpi.text import clean

    comm = _comm()
    raw = MPI.Get_library_version()
    line = comm.library()
    assert line and "\x00" not in line and line == clean(line)
    assert line.split()[:2] == raw.split()[:2]  # the library's own name, word for word
    path = mpi_tmp_path / f"rank{comm.rank}.h5"
    with h5py.File(path, "w") as f:
        hdf5.attr(f, "mpi", line)
        hdf5.attr(f, "raw", raw)
        hdf5.dataset(f, "processor", np.array([MPI.Get_processor_name()], dtype=object))
    with h5py.File(path, "r") as f:
        assert f.attrs["mpi"] == line
        assert f.attrs["raw"] == clean(raw, lines=True)
        assert f["processor"].asstr()[0] == clean(MPI.Get_processor_name(), lines=True)
