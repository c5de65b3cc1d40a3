"""The vectorised path matches the one-at-a-time path, and falls back (saying why) where it cannot apply."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch.func import vmap
from torch.utils.data import Dataset

from hsmpi import LogUniform, Uniform
from hsmpi.engine import batched, vectorize
from hsmpi.engine.batched import reason_not_to
from hsmpi.engine.data import Data
from hsmpi.engine.member import Member

from conftest import run_hsmpi, task_spec
from tasks_for_tests import Scheduled, Tiny, TinyAdam

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
    assert reason_not_to(members, data) is None
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
    assert reason_not_to(members[:1], data) is None, "one MLP on the CPU: a stack of one"
    cnn = _normed(cnn=True)
    assert "one member" in reason_not_to(cnn[0][:1], cnn[1]), "vmap's models: one member as it is"
    assert "TensorDataset" in reason_not_to(members, Data(_Listy(data.dataset), CPU))
    with_dropout = [Member.create(TinyAdam(), i, {"lr": 0.01, "beta1": 0.9}, 0, CPU) for i in range(2)]
    assert reason_not_to(with_dropout, data) is None
    alpha = copy.deepcopy(members)
    for m in alpha:
        m.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.AlphaDropout(0.1), torch.nn.Linear(4, 1))
    assert "AlphaDropout" in reason_not_to(alpha, data)
    shaped = copy.deepcopy(members)
    shaped[1].model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    assert "differ" in reason_not_to(shaped, data)
    rates = [Member.create(TinyAdam(), i, {"lr": 0.01, "beta1": 0.9}, 0, CPU) for i in range(2)]
    rates[1].model[2].p = 0.3  # a member's own dropout rate
    assert "dropout or normalisation settings" in reason_not_to(rates, data)
    rms = copy.deepcopy(members)
    for m in rms:
        m.optimizer = torch.optim.RMSprop(m.model.parameters(), lr=0.01)
    assert "RMSprop" in reason_not_to(rms, data)
    sizes = copy.deepcopy(members)
    sizes[0].hp["batch_size"] = 8
    assert "batch sizes" in reason_not_to(sizes, data)
    ams = copy.deepcopy(members)
    ams[1].optimizer.param_groups[0]["amsgrad"] = True
    assert "amsgrad" in reason_not_to(ams, data)


def test_fallback_for_frozen_or_partly_optimized_models() -> None:
    members, data = _members("adam", trained_first=False)
    frozen = copy.deepcopy(members)
    for m in frozen:
        m.model[0].weight.requires_grad_(False)
    assert "frozen" in reason_not_to(frozen, data)
    subset = copy.deepcopy(members)
    for m in subset:
        m.optimizer = torch.optim.Adam(list(m.model.parameters())[2:], lr=0.01)
    assert "exactly the model's parameters" in reason_not_to(subset, data)


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
    result = run_hsmpi(["--task", task_spec("ItemModel"), "-S", "4", "-M", "4", "-m", "2", "--vectorize", "on",
                        "--threads", "1", "--out", str(tmp_path)], ranks=2, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("vectorize: training one member at a time: vmap cannot batch the model") == 1


@pytest.mark.parametrize("task", ["regression1d", "batchnorm"])
def test_a_vectorised_run_matches_one_at_a_time(tmp_path: Any, task: str) -> None:
    """A whole run (4 members on this process, batched or not): the same winners, losses within 1e-3."""
    import hsmpi
    from hsmpi.parallel.comm import SerialComm

    runs = {}
    for mode in ("on", "off"):
        lines: list[str] = []
        result = hsmpi.run(task if task == "regression1d" else Normed(), comm=SerialComm(), log=lines.append,
                           population=4, epochs=4, sessions=2, vectorize=mode, threads=1, out=str(tmp_path / mode))
        assert not any("vectorize: training one member" in line for line in lines)
        runs[mode] = (np.array(result.history["val_loss"]), np.array(result.history["winner"]))
    torch.testing.assert_close(torch.from_numpy(runs["on"][0]), torch.from_numpy(runs["off"][0]), rtol=1e-3, atol=0)
    assert (runs["on"][1] == runs["off"][1]).all()


class Normed(Plain):
    """BatchNorm (running statistics as buffers) in an MLP, and in a small CNN on 1x6x6 images.  The layer
    before it has no bias: BatchNorm cancels a bias, whose gradient is then rounding noise that Adam scales
    up, so the two paths would part there by more than rounding."""

    cnn = False
    space = {"lr": LogUniform(1e-3, 1e-1), "beta1": Uniform(0.5, 0.95), "wd": LogUniform(1e-6, 1e-3)}

    def data(self, seed: int) -> Any:
        if not self.cnn:
            return super().data(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(48, 1, 6, 6, generator=g)
        ds = torch.utils.data.TensorDataset(x, x.mean((1, 2, 3)).unsqueeze(1))
        return ds, ds, ds

    def model(self) -> torch.nn.Module:
        if self.cnn:
            return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(64, 1))
        return torch.nn.Sequential(torch.nn.Linear(3, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 1))


def _normed(cnn: bool) -> tuple[list[Member], Data]:
    task = Normed()
    task.cnn = cnn
    data = Data(task.data(0)[0], CPU)
    return [Member.create(task, i, hp, seed=1, device=CPU, default_batch_size=16)
            for i, hp in enumerate(HPS["adam"])], data


def _assert_same_members(a: Member, b: Member) -> None:
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            torch.testing.assert_close(sa[i][key], sb[i][key], rtol=1e-4, atol=1e-5, msg=f"{i} {key}")


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp", "cnn"])
def test_batchnorm_is_batched_and_matches_one_at_a_time(cnn: bool) -> None:
    """Running statistics are per member and updated as each model alone updates its own."""
    torch.set_num_threads(1)
    members, data = _normed(cnn)
    twins = copy.deepcopy(members)
    assert reason_not_to(members, data) is None
    stack = vectorize.Stack(members, data)
    batched = stack.train(data, epochs=3)
    assert batched == pytest.approx([m.train(data, 3) for m in twins], rel=1e-4)
    for a, b in zip(members, twins):
        assert int(a.model[1].num_batches_tracked) == 3 * data.steps(16)
        _assert_same_members(a, b)
    # evaluation uses each member's own running statistics
    assert [v["loss"] for v in stack.evaluate(data)] == pytest.approx([m.evaluate(data) for m in twins], rel=1e-4)


def test_the_stack_keeps_the_members_rows_and_takes_back_an_adopted_state() -> None:
    """Members' parameters and optimizer state are views of the stack's rows across sessions; a member that
    adopts a winner's state (new tensors) is copied back into its rows before the next session."""
    torch.set_num_threads(1)
    members, data = _members("adam", trained_first=False)
    twins = copy.deepcopy(members)
    stack = vectorize.Stack(members, data)
    stack.train(data, epochs=1)
    for m in twins:
        m.train(data, 1)
    p = next(members[1].model.parameters())
    assert p.data_ptr() == stack.flat[1].data_ptr(), "the member's first parameter is the start of its row"
    exp_avg = members[1].optimizer.state[p]["exp_avg"]
    assert stack.state["exp_avg"][1].data_ptr() == exp_avg.data_ptr()
    for group in (members, twins):  # step 4 and 5: member 2 takes member 0's state, then new values
        header = group[0].header()
        flat = torch.zeros(header.nbytes, dtype=torch.uint8)
        group[0].pack(header, flat)
        group[2].adopt(header, flat, {"lr": 0.02, "beta1": 0.7, "wd": 0.0})
        group[1].set_hparams({"lr": 0.001, "beta1": 0.95, "wd": 0.0})
    assert members[1].optimizer.state[p]["exp_avg"] is exp_avg, "set_hparams keeps the views"
    assert stack.holds(members)
    stack.train(data, epochs=2)
    for m in twins:
        m.train(data, 2)
    for a, b in zip(members, twins):
        _assert_same_members(a, b)
    assert not torch.equal(stack.flat[0], stack.flat[2]), "member 2 trained with its own values"


class Dropped(Plain):
    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(64, 1))


def _dropped(n: int) -> tuple[list[Member], Data]:
    task = Dropped()
    data = Data(task.data(0)[0], CPU)
    hp = HPS["adam"][0]
    return [Member.create(task, i, hp, seed=1, device=CPU, default_batch_size=16) for i in range(n)], data


def test_dropout_masks_are_each_members_own_and_fair() -> None:
    masks = batched.Masks()
    keys = torch.randint(0, 2**62, (8,), generator=torch.Generator().manual_seed(0))
    draws = []
    for step in range(3):
        masks.step = step
        draws.append(vmap(lambda key: _uniform(masks, key))(keys))  # (members, 4096)
    u = torch.stack(draws)  # (steps, members, n)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005) and float(u.var()) == pytest.approx(1 / 12, rel=0.02)
    flat = u.reshape(-1, u.shape[-1])  # every (step, member) row against every other
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(len(flat), dtype=torch.bool)]
    assert float(off.abs().max()) < 0.08, "members' and steps' draws are independent"
    kept = (u[0] >= 0.3).float().mean(1)
    assert torch.allclose(kept, torch.full_like(kept, 0.7), atol=0.03)
    # one key gives the same draws whichever members it is batched with
    again = vmap(lambda key: _uniform(masks, key))(keys[[5, 2]])
    assert torch.equal(again, draws[-1][[5, 2]])


def _uniform(masks: Any, key: torch.Tensor) -> torch.Tensor:
    masks.key, masks.layer = key, 0
    return masks.uniform(torch.Size([4096]), CPU)


def test_channel_dropout_drops_whole_channels() -> None:
    masks = batched.Masks()
    module = torch.nn.Dropout2d(0.5)
    x = torch.ones(3, 8, 16, 5, 5)  # (members, batch, channels, h, w)

    def drop(key: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        masks.key, masks.layer = key, 0
        return masks.dropout(module, xs)

    out = vmap(drop)(torch.tensor([1, 2, 3]), x)
    per_channel = out.flatten(3)
    assert ((per_channel == 0).all(3) | (per_channel == 2).all(3)).all(), "a channel is dropped or kept whole"
    assert 0.3 < float((per_channel[..., 0] == 0).float().mean()) < 0.7
    assert not torch.equal(out[0], out[1])


def test_dropout_training_does_not_depend_on_the_layout() -> None:
    """A member trains to the same weights whichever members share its stack; its dropout stream moves on."""
    torch.set_num_threads(1)
    members, data = _dropped(4)
    pair, four = copy.deepcopy(members[:2]), members
    before = pair[1].rng_state.clone()
    vectorize.Stack(pair, data).train(data, epochs=2)
    vectorize.Stack(four, data).train(data, epochs=2)
    for a, b in zip(pair, four[:2]):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.rng_state, b.rng_state)
    assert not torch.equal(before, pair[1].rng_state), "the dropout keys come from the member's own stream"
    same = [m for m in _dropped(2)[0]]  # the same two members without dropout's effect differ: dropout acted
    for m in same:
        m.model[2].p = 0.0
    vectorize.Stack(same, data).train(data, epochs=2)
    assert not torch.equal(next(same[0].model.parameters()), next(pair[0].model.parameters()))


def test_a_model_vmap_cannot_run_falls_back_with_its_reason() -> None:
    from tasks_for_tests import ItemModel

    task = ItemModel()
    data = Data(task.data(0)[0], CPU)
    members = [Member.create(task, i, {"lr": 0.01, "beta1": 0.9}, 0, CPU) for i in range(2)]
    assert reason_not_to(members, data) is None
    before = [p.clone() for p in members[0].model.parameters()]
    with pytest.raises(vectorize.Unbatchable, match="vmap cannot batch the model"):
        vectorize.Stack(members, data)
    assert all(torch.equal(a, b) for a, b in zip(before, members[0].model.parameters()))


def test_the_direct_mlp_path_matches_vmap_masks_included() -> None:
    """A Sequential MLP runs without vmap; with vmap it trains to the same weights, dropout masks included."""
    torch.set_num_threads(1)
    members, data = _dropped(3)
    twins = copy.deepcopy(members)
    direct, through_vmap = vectorize.Stack(members, data), vectorize.Stack(twins, data, direct=False)
    assert direct.direct is not None and through_vmap.direct is None
    assert direct.train(data, 2) == pytest.approx(through_vmap.train(data, 2), rel=1e-5)
    for a, b in zip(members, twins):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert batched.direct_layers(Normed().model()) is None, "BatchNorm goes through vmap"


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_shared_state_reaches_the_stacks_members_as_row_copies(opt: str) -> None:
    """Step 4 inside a stack: the first receiver loads the state, the others copy its rows; the same as
    every receiver loading it, and the receivers' optimizer state stays views of their rows."""
    from hsmpi.parallel import flatstate
    from hsmpi.parallel.comm import SerialComm
    from hsmpi.parallel.share import share_state

    torch.set_num_threads(1)
    members, data = _members(opt, trained_first=True)
    members.append(copy.deepcopy(members[1]))  # four members: one donor, three receivers
    members[3].index = 3
    twins = copy.deepcopy(members)
    stack = vectorize.Stack(members, data)
    stack.train(data, 1)
    for m in twins:
        m.train(data, 1)
    before = {id(m): [id(m.optimizer.state[p]) for p in m.model.parameters()] for m in members[2:]
              if stack.linked[stack.row[id(m)]]}  # the receivers after the first, which loads the state itself
    share_state(SerialComm(), flatstate.Buffer(CPU), 0, members[0], [vectorize.RowCopies(stack, members[1:])])
    share_state(SerialComm(), flatstate.Buffer(CPU), 0, twins[0], twins[1:])
    for a, b in zip(members, twins):
        _assert_same_members(a, b)
    key = "momentum_buffer" if opt == "sgd" else "exp_avg"
    for m in members[1:]:
        r = stack.row[id(m)]
        assert [m.optimizer.state[p][key].data_ptr() for p in m.model.parameters()] == \
            stack._addresses(stack.state[key], r), "every receiver's state is views of its rows"
        if id(m) in before:
            assert [id(m.optimizer.state[p]) for p in m.model.parameters()] == before[id(m)], \
                "a receiver that was a view of its rows stays one: no new tensors"
    assert before, "some receivers were views before the share"
    new = HPS["sgd" if opt == "sgd" else "adam"][2]
    for group in (members, twins):
        for m in group[1:]:
            m.set_hparams(new)
    stack.train(data, 2)
    for m in twins:
        m.train(data, 2)
    for a, b in zip(members, twins):
        _assert_same_members(a, b)


def test_row_copies_fall_back_to_loading_each_member_for_another_optimizer() -> None:
    members, data = _members("adam", trained_first=True)
    stack = vectorize.Stack(members, data)
    donor = Member.create(Plain(), 9, HPS["adam"][0], seed=1, device=CPU, default_batch_size=16)
    donor.optimizer = torch.optim.SGD(donor.model.parameters(), lr=0.1, momentum=0.9)
    donor.train(data, 1)
    header = donor.header()
    flat = torch.zeros(header.nbytes, dtype=torch.uint8)
    donor.pack(header, flat)
    vectorize.RowCopies(stack, members[1:]).load_state(header, flat)
    for m in members[1:]:  # the SGD state is carried for set_hparams, the weights are the donor's
        assert m._carried is not None and m._carried[0] == "SGD"
        for p, q in zip(m.model.parameters(), donor.model.parameters()):
            assert torch.equal(p, q)


def test_a_scheduled_task_is_batched_and_steps_each_members_schedule() -> None:
    """Each member's scheduler steps after each batched step, as one at a time: the same learning rates,
    positions and (within rounding) weights."""
    torch.set_num_threads(1)
    task = _ScheduledMLP()
    data = Data(task.data(0)[0], CPU)
    hps = [{"lr": 0.05, "beta1": 0.9, "gamma": 0.5}, {"lr": 0.01, "beta1": 0.7, "gamma": 0.9}]
    members, twins = ([Member.create(task, i, hp, seed=1, device=CPU, default_batch_size=16, train_size=len(data),
                                     epochs=4) for i, hp in enumerate(hps)] for _ in range(2))  # a copy would
    # leave the copied optimizer's step unwrapped, which torch's scheduler warns about
    assert reason_not_to(members, data) is None
    vectorize.train(members, data, epochs=2)
    for m in twins:
        m.train(data, 2)
    for a, b in zip(members, twins):
        assert a.steps == b.steps == 8
        assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"] < a.hp["lr"]
        assert a.scheduler.last_epoch == b.scheduler.last_epoch
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


class _ScheduledMLP(Scheduled):
    """Scheduled without dropout (whose batched masks are not the one-at-a-time path's)."""

    def model(self) -> torch.nn.Module:
        return Plain.model(self)  # type: ignore[arg-type]


class _Wide(Plain):
    """A 3-64-1 MLP: torch multiplies one matrix by a vector with another kernel than a batch of them once
    the product is large enough (64 rows x 64 inputs -> 1 output here; 16 x 16 -> 1 is not)."""

    def model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_stack_of_one_mlp_gives_the_bits_of_a_larger_stack(opt: str) -> None:
    """A stack of one gives its member the same bits as a stack of three, trained and evaluated."""
    torch.set_num_threads(1)
    task = _Wide()
    task.opt = opt
    data = Data(task.data(0)[0], CPU)
    members = [Member.create(task, i, hp, seed=1, device=CPU, default_batch_size=64)
               for i, hp in enumerate(HPS["sgd" if opt == "sgd" else "adam"])]
    alone = copy.deepcopy(members[:1])
    vectorize.train(alone, data, epochs=3)
    vectorize.train(members, data, epochs=3)
    for p, q in zip(alone[0].model.parameters(), members[0].model.parameters()):
        assert torch.equal(p, q)
    val = Data(task.data(0)[1], CPU)
    assert vectorize.evaluate(alone, val) == vectorize.evaluate(members, val)[:1]


def _weights(result: Any) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in result.best_model.parameters()]


def test_auto_batches_an_mlp_population_on_the_cpu_and_only_where_every_member_can(tmp_path: Any) -> None:
    """`auto` on the CPU gives `on`'s bits for a population of MLPs that all share one stack, and `off`'s
    where they cannot all share one (batch sizes searched), whichever members share a rank."""
    import hsmpi
    from hsmpi.parallel.comm import SerialComm

    def run(task: Any, mode: str) -> list[np.ndarray]:
        result = hsmpi.run(task, comm=SerialComm(), log=None, population=4, epochs=4, sessions=2, seed=3,
                           vectorize=mode, threads=1, export_top=0, out=str(tmp_path / f"{type(task).__name__}-{mode}"))
        return _weights(result)

    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))  # noqa: E731
    auto, on, off = (run(TinyAdam(), mode) for mode in ("auto", "on", "off"))
    assert same(auto, on) and not same(auto, off)
    auto, off = run(Tiny(), "auto"), run(Tiny(), "off")
    assert same(auto, off)
    cnn = Normed()  # not an MLP: vmap's models are not batched by `auto` on the CPU
    cnn.cnn = True
    auto, on, off = (run(cnn, mode) for mode in ("auto", "on", "off"))
    assert same(auto, off) and not same(on, off)
