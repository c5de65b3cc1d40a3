"""A member's state through one flat byte buffer: exact, and the receiver's hyperparameters win."""

from __future__ import annotations

import torch

from hsmpi.engine.data import Data
from hsmpi.engine.member import Member
from hsmpi.parallel import flatstate

from tasks_for_tests import Tiny, TinyAdam


def _trained(task: object, index: int, hp: dict, steps_seed: int = 0) -> tuple[Member, Data]:
    train = Data(task.data(steps_seed)[0], torch.device("cpu"))  # type: ignore[attr-defined]
    member = Member.create(task, index, hp, seed=steps_seed, device=torch.device("cpu"))
    member.train(train, epochs=2)
    return member, train


def _state(member: Member) -> tuple[dict, dict]:
    return member.model.state_dict(), member.optimizer.state_dict()


def _copy_via_buffer(donor: Member, receiver: Member, hp: dict) -> None:
    header = donor.header()
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(header.nbytes)
    donor.pack(header, buffer.device_view())
    received = buffer.array(header.nbytes).copy()  # what another rank would get
    buffer.array(header.nbytes)[:] = 0
    buffer.array(header.nbytes)[:] = received
    receiver.adopt(header, buffer.device_view(), hp)


def test_adam_state_round_trips_exactly_and_new_lr_wins() -> None:
    task = TinyAdam()
    donor, _ = _trained(task, 0, {"lr": 0.01, "beta1": 0.9})
    receiver, _ = _trained(task, 1, {"lr": 0.05, "beta1": 0.6})
    _copy_via_buffer(donor, receiver, {"lr": 0.002, "beta1": 0.7})
    for (k, a), (_, b) in zip(donor.model.state_dict().items(), receiver.model.state_dict().items()):
        assert torch.equal(a, b), k
    d_opt, r_opt = donor.optimizer.state_dict(), receiver.optimizer.state_dict()
    assert d_opt["state"].keys() == r_opt["state"].keys()
    for index, state in d_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, r_opt["state"][index][name]), (index, name)
    group = receiver.optimizer.param_groups[0]
    assert group["lr"] == 0.002 and group["betas"][0] == 0.7
    assert receiver.hp == {"lr": 0.002, "beta1": 0.7}


def test_members_loaded_from_one_buffer_do_not_share_momentum() -> None:
    task = Tiny()
    hp = {"lr": 0.01, "momentum": 0.9, "batch_size": 16, "nesterov": "no", "width_unused": 1}
    donor, train = _trained(task, 0, hp)
    a, _ = _trained(task, 1, hp)
    b, _ = _trained(task, 2, hp)
    header = donor.header()
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(header.nbytes)
    donor.pack(header, buffer.device_view())
    a.adopt(header, buffer.device_view(), hp)
    b.adopt(header, buffer.device_view(), hp)
    before = [v["momentum_buffer"].clone() for v in b.optimizer.state_dict()["state"].values()]
    a.train(train, epochs=1)  # stepping a must not move b's buffers
    after = [v["momentum_buffer"] for v in b.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    donor_mom = [v["momentum_buffer"] for v in donor.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(donor_mom, after))


def test_header_offsets_are_aligned_and_cover_every_tensor() -> None:
    donor, _ = _trained(TinyAdam(), 0, {"lr": 0.01, "beta1": 0.9})
    header = donor.header()
    params = sum(1 for _ in donor.model.state_dict())
    assert sum(1 for e in header.entries if e.key[0] == "model") == params
    assert sum(1 for e in header.entries if e.key[0] == "opt") == 3 * len(list(donor.model.parameters()))
    ends = [e.offset + e.nbytes for e in header.entries]
    assert all(e.offset % 16 == 0 for e in header.entries)
    assert max(ends) <= header.nbytes
    assert all(a.offset + a.nbytes <= b.offset for a, b in zip(header.entries, header.entries[1:]))


def test_buffer_is_reused_between_sessions() -> None:
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(1000)
    first = buffer.host.data_ptr()
    buffer.ensure(800)
    buffer.ensure(1000)
    assert buffer.host.data_ptr() == first


def test_other_optimizer_state_is_dropped_not_misapplied() -> None:
    donor, _ = _trained(TinyAdam(), 0, {"lr": 0.01, "beta1": 0.9})
    hp = {"lr": 0.01, "momentum": 0.9, "batch_size": 16, "nesterov": "no", "width_unused": 1}
    receiver = Member.create(Tiny(), 1, hp, seed=0, device=torch.device("cpu"))
    header = donor.header()
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(header.nbytes)
    donor.pack(header, buffer.device_view())
    receiver.adopt(header, buffer.device_view(), hp)
    assert receiver.optimizer.state_dict()["state"] == {}
    assert torch.equal(receiver.model[0].weight, donor.model[0].weight)


def test_kept_views_follow_the_buffer_memory() -> None:
    """Views are kept only for a live Buffer's current memory: a grown or dropped buffer leaves none behind."""
    import gc

    task = TinyAdam()
    donor, _ = _trained(task, 0, {"lr": 0.01, "beta1": 0.9})
    receiver, _ = _trained(task, 1, {"lr": 0.05, "beta1": 0.6})
    header = donor.header()
    buffer = flatstate.Buffer(torch.device("cpu"))
    buffer.ensure(header.nbytes)
    place = flatstate._place(buffer.host)
    donor.pack(header, buffer.device_view())
    assert len(flatstate._CACHES[place]) == 1
    buffer.ensure(header.nbytes * 2)  # grows: new memory, the old memory's views are dropped
    new_place = flatstate._place(buffer.host)
    assert new_place != place and flatstate._CACHES[new_place] == {}
    donor.pack(header, buffer.device_view())
    receiver.adopt(header, buffer.device_view(), {"lr": 0.002, "beta1": 0.7})
    for (k, a), (_, b) in zip(donor.model.state_dict().items(), receiver.model.state_dict().items()):
        assert torch.equal(a, b), k
    del buffer
    gc.collect()
    assert new_place not in flatstate._CACHES
    loose = torch.zeros(header.nbytes, dtype=torch.uint8)  # not a Buffer's memory: fresh views, nothing kept
    donor.pack(header, loose)
    assert flatstate._place(loose) not in flatstate._CACHES
