"""GPU checks: skipped where torch sees no CUDA device (run by scripts/gpu_check.sh on a GPU machine)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import hsmpi
from hsmpi.engine import vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member
from hsmpi.parallel import flatstate

from conftest import run_hsmpi, task_spec
from tasks_for_tests import TinyAdam

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda", 0)


class PlainAdam(TinyAdam):
    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _members(k: int) -> tuple[list[Member], Data]:
    task = PlainAdam()
    data = Data(task.data(0)[0], CUDA)
    hps = [{"lr": 0.001 * (i + 1), "beta1": 0.5 + 0.1 * (i % 4)} for i in range(k)]
    return [Member.create(task, i, hp, seed=1, device=CUDA, default_batch_size=16) for i, hp in enumerate(hps)], data


def test_vectorised_matches_one_at_a_time_on_cuda() -> None:
    members, data = _members(8)
    twins = copy.deepcopy(members)
    batched = vectorize.train(members, data, epochs=2)
    one = [m.train(data, 2) for m in twins]
    assert batched == pytest.approx(one, rel=1e-3)
    for a, b in zip(members, twins):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_batchnorm_and_dropout_are_batched_on_cuda() -> None:
    """BatchNorm's running statistics match one at a time on the GPU; dropout masks are each member's own."""
    from test_vectorize import Dropped, Normed

    for task in (Normed(), Dropped()):
        data = Data(task.data(0)[0], CUDA)
        members = [Member.create(task, i, {"lr": 0.01 / (i + 1), "beta1": 0.8, "wd": 0.0}, seed=1, device=CUDA,
                                 default_batch_size=16) for i in range(4)]
        twins = copy.deepcopy(members)
        vectorize.Stack(members, data).train(data, 2)
        if isinstance(task, Normed):
            for m in twins:
                m.train(data, 2)
        else:  # the same members two at a time: the same weights
            vectorize.Stack(twins[:2], data).train(data, 2)
            vectorize.Stack(twins[2:], data).train(data, 2)
        for a, b in zip(members, twins):
            for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
                torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=name)


def test_state_goes_through_pinned_host_buffer_and_training_continues() -> None:
    members, data = _members(2)
    members[0].train(data, 1)
    header = members[0].header()
    assert any(e.on_cpu for e in header.entries), "Adam's step stays on the CPU"
    buffer = flatstate.Buffer(CUDA)
    buffer.ensure(header.nbytes)
    assert buffer.host.is_pinned()
    members[0].pack(header, buffer.device_view())
    buffer.to_host(header.nbytes)
    copy_of_host = buffer.array(header.nbytes).copy()
    buffer.device_view().zero_()
    buffer.array(header.nbytes)[:] = copy_of_host
    buffer.to_device(header.nbytes)
    members[1].adopt(header, buffer.device_view(), {"lr": 0.002, "beta1": 0.7})
    for p, q in zip(members[0].model.parameters(), members[1].model.parameters()):
        assert torch.equal(p, q)
    assert members[1].optimizer.param_groups[0]["lr"] == 0.002
    members[1].train(data, 1)


def test_run_on_cuda_in_process(tmp_path: Path) -> None:
    result = hsmpi.run(PlainAdam(), population=8, epochs=4, sessions=2, device="cuda", out=str(tmp_path), log=None)
    assert next(result.best_model.parameters()).device.type == "cuda"
    assert result.test_loss == result.test_loss


def test_two_ranks_share_the_gpu(tmp_path: Path) -> None:
    result = run_hsmpi(["--task", task_spec("TinyAdam"), "-S", "8", "-M", "4", "-m", "2", "--device", "cuda",
                        "--out", str(tmp_path)], ranks=2, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "device cuda:0" in result.stdout
