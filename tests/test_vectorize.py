"""The vectorised path matches the one-at-a-time path, and falls back (saying why) where it cannot apply."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from hsmpi.engine import vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member

from conftest import run_hsmpi, task_spec
from tasks_for_tests import TinyAdam

CPU = torch.device("cpu")


class Plain(TinyAdam):
    """No dropout; the optimizer is picked by the `opt` attribute so one class covers SGD, Adam and AdamW."""

    opt = "adam"

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def optimizer(self, params: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
        if self.opt == "sgd":
            return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                                   weight_decay=hp["wd"], dampening=0.0 if hp["nesterov"] else 0.1)
        cls = torch.optim.AdamW if self.opt == "adamw" else torch.optim.Adam
        return cls(params, lr=hp["lr"], betas=(hp["beta1"], 0.99), weight_decay=hp["wd"], eps=1e-7)


HPS = {
    "sgd": [{"lr": 0.05, "momentum": 0.9, "nesterov": True, "wd": 1e-3},
            {"lr": 0.01, "momentum": 0.0, "nesterov": False, "wd": 0.0},
            {"lr": 0.02, "momentum": 0.5, "nesterov": False, "wd": 1e-2}],
    "adam": [{"lr": 0.01, "beta1": 0.9, "wd": 0.0}, {"lr": 0.003, "beta1": 0.6, "wd": 1e-3},
             {"lr": 0.03, "beta1": 0.8, "wd": 1e-2}],
}


def _members(opt: str, trained_first: bool) -> tuple[list[Member], Data]:
    task = Plain()
    task.opt = opt
    data = Data(task.data(0)[0], CPU)
    hps = HPS["sgd" if opt == "sgd" else "adam"]
    members = [Member.create(task, i, hp, seed=1, device=CPU, default_batch_size=16) for i, hp in enumerate(hps)]
    if trained_first:  # some optimizer state already there, as after adopting a winner
        members[0].train(data, 1)
        members[2].train(data, 1)
    return members, data


@pytest.mark.parametrize("trained_first", [False, True], ids=["fresh", "with-state"])
@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_vectorised_matches_one_at_a_time(opt: str, trained_first: bool) -> None:
    torch.set_num_threads(1)
    members, data = _members(opt, trained_first)
    twins = copy.deepcopy(members)
    assert vectorize.reason_not_to(members, data) is None
    batched = vectorize.train(members, data, epochs=3)
    one_by_one = [m.train(data, 3) for m in twins]
    assert batched == pytest.approx(one_by_one, rel=1e-4)
    for a, b in zip(members, twins):
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
        sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert sa[i].keys() == sb[i].keys()
            for key in sa[i]:
                torch.testing.assert_close(sa[i][key], sb[i][key], rtol=1e-4, atol=1e-6, msg=f"{i} {key}")
        assert torch.equal(a.data_gen.get_state(), b.data_gen.get_state()), "each member keeps its own data order"


def test_vectorised_evaluation_matches() -> None:
    members, data = _members("sgd", trained_first=True)
    val = Data(Plain().data(0)[1], CPU)
    assert [v["loss"] for v in vectorize.evaluate(members, val)] == \
        pytest.approx([m.evaluate(val) for m in members], rel=1e-5)


def test_vectorised_evaluation_gives_each_members_metrics() -> None:
    members, _ = _members("sgd", trained_first=True)
    val = Data(Plain().data(0)[1], CPU)
    task = members[0].task
    task.metrics = lambda out, y: {"mae": (out - y).abs().mean()}  # type: ignore[attr-defined]
    try:
        batched = vectorize.evaluate(members, val)
        alone = [m.evaluate_all(val) for m in members]
    finally:
        del task.metrics  # type: ignore[attr-defined]
    for b, a in zip(batched, alone):
        assert set(b) == {"loss", "mae"} and b == pytest.approx(a, rel=1e-5)


def test_vectorised_results_keep_working_with_the_members_optimizers() -> None:
    members, data = _members("adam", trained_first=False)
    vectorize.train(members, data, epochs=1)
    before = [p.clone() for p in members[1].model.parameters()]
    members[1].train(data, 1)  # the one-at-a-time path continues from the written-back state
    assert any(not torch.equal(a, b) for a, b in zip(before, members[1].model.parameters()))
    assert int(members[1].optimizer.state_dict()["state"][0]["step"]) == 2 * len(range(0, len(data), 16))


class _Listy(Dataset):
    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        return self.base[i]


def test_fallback_reasons() -> None:
    members, data = _members("adam", trained_first=False)
    assert "one member" in vectorize.reason_not_to(members[:1], data)
    assert "TensorDataset" in vectorize.reason_not_to(members, Data(_Listy(data.dataset), CPU))
    with_dropout = [Member.create(TinyAdam(), i, {"lr": 0.01, "beta1": 0.9}, 0, CPU) for i in range(2)]
    assert "dropout" in vectorize.reason_not_to(with_dropout, data)
    bn = copy.deepcopy(members)
    for m in bn:
        m.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    assert "buffers" in vectorize.reason_not_to(bn, data)
    rms = copy.deepcopy(members)
    for m in rms:
        m.optimizer = torch.optim.RMSprop(m.model.parameters(), lr=0.01)
    assert "RMSprop" in vectorize.reason_not_to(rms, data)
    sizes = copy.deepcopy(members)
    sizes[0].hp["batch_size"] = 8
    assert "batch sizes" in vectorize.reason_not_to(sizes, data)
    ams = copy.deepcopy(members)
    ams[1].optimizer.param_groups[0]["amsgrad"] = True
    assert "amsgrad" in vectorize.reason_not_to(ams, data)


def test_fallback_for_frozen_or_partly_optimized_models() -> None:
    members, data = _members("adam", trained_first=False)
    frozen = copy.deepcopy(members)
    for m in frozen:
        m.model[0].weight.requires_grad_(False)
    assert "frozen" in vectorize.reason_not_to(frozen, data)
    subset = copy.deepcopy(members)
    for m in subset:
        m.optimizer = torch.optim.Adam(list(m.model.parameters())[2:], lr=0.01)
    assert "exactly the model's parameters" in vectorize.reason_not_to(subset, data)


def test_adam_with_decoupled_weight_decay_is_batched_as_adamw() -> None:
    members, data = _members("adam", trained_first=False)
    for m in members:
        m.optimizer = torch.optim.Adam(m.model.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    twins = copy.deepcopy(members)
    vectorize.train(members, data, epochs=2)
    for m in twins:
        m.train(data, 2)
    for a, b in zip(members, twins):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_cli_says_once_why_it_falls_back(tmp_path: Any) -> None:
    result = run_hsmpi(["--task", task_spec("Tiny"), "-S", "4", "-M", "4", "-m", "2", "--vectorize", "on",
                        "--threads", "1", "--out", str(tmp_path)], ranks=2, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("vectorize: training one member at a time: the model uses dropout") == 1


def test_a_vectorised_run_matches_one_at_a_time(tmp_path: Any) -> None:
    """A whole run (4 members on this process, batched or not): the same winners, losses within 1e-3."""
    import hsmpi
    from hsmpi.parallel.comm import SerialComm

    runs = {}
    for mode in ("on", "off"):
        lines: list[str] = []
        result = hsmpi.run("regression1d", comm=SerialComm(), log=lines.append, population=4, epochs=4, sessions=2,
                           vectorize=mode, threads=1, out=str(tmp_path / mode))
        assert not any("vectorize: training one member" in line for line in lines)
        runs[mode] = (np.array(result.history["val_loss"]), np.array(result.history["winner"]))
    torch.testing.assert_close(torch.from_numpy(runs["on"][0]), torch.from_numpy(runs["off"][0]), rtol=1e-3, atol=0)
    assert (runs["on"][1] == runs["off"][1]).all()
