"""hsmpi.sampling: one contract every sampler passes, then each sampler's own behaviour."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hsmpi.algorithm.sampling import SAMPLERS, TPE, URS, Observation, Perturb, SamplerError, make_sampler, observations
from hsmpi.algorithm.space import Choice, IntUniform, LogUniform, Param, Uniform, check_hparams, sample_space

SPACE: dict[str, Param] = {
    "lr": LogUniform(1e-5, 1e-1),
    "dropout": Uniform(0.0, 0.5),
    "layers": IntUniform(1, 8),
    "batch_size": Choice([16, 32, 64, 128]),
    "optimizer": Choice(["adam", "sgd", "rmsprop"]),
}


def _corner(which: str) -> dict[str, Any]:
    """Every parameter at its low (or high) end."""
    hp: dict[str, Any] = {}
    for name, p in SPACE.items():
        if isinstance(p, Choice):
            hp[name] = p.values[0] if which == "low" else p.values[-1]
        else:
            hp[name] = p.low if which == "low" else p.high
            if not isinstance(p, IntUniform):
                hp[name] = float(hp[name])
    return hp


def _starts() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1234)
    return [_corner("low"), _corner("high")] + [sample_space(SPACE, rng) for _ in range(8)]


def _check_types(new: dict[str, Any]) -> None:
    for name, p in SPACE.items():
        v = new[name]
        if isinstance(p, IntUniform):
            assert type(v) is int, (name, v, type(v))
        elif isinstance(p, Uniform):
            assert type(v) is float, (name, v, type(v))
        else:
            assert v in p.values and type(v) in {type(x) for x in p.values}, (name, v, type(v))


# The contract: every sampler in SAMPLERS, built both directly and by name.
def _builders() -> list:
    out = []
    for name, cls in sorted(SAMPLERS.items()):
        out.append(pytest.param(cls, id=f"{name}-default"))
        out.append(pytest.param(lambda name=name: make_sampler(name), id=f"{name}-by-name"))
    out.append(pytest.param(lambda: _history_tpe(), id="tpe-with-history"))
    out.append(pytest.param(lambda: URS(radius=0.3, explore=0.25), id="urs-explore"))
    out.append(pytest.param(lambda: make_sampler("tpe", explore=0.5), id="tpe-explore-by-name"))
    return out


def _history_tpe(radius: float = 0.3, candidates: int = 16) -> TPE:
    """A tpe whose history says: high dropout, low lr and adam did well; the opposite did badly."""
    rng = np.random.default_rng(77)
    seen = []
    for _ in range(12):
        hp = sample_space(SPACE, rng)
        seen.append(Observation({**hp, "dropout": float(rng.uniform(0.4, 0.5)), "lr": 1e-5 * float(rng.uniform(1, 3)),
                                 "optimizer": "adam"}, True))
        seen.append(Observation({**hp, "dropout": float(rng.uniform(0.0, 0.1)), "lr": 1e-1 / float(rng.uniform(1, 3)),
                                 "optimizer": "sgd"}, False))
    return TPE(radius=radius, candidates=candidates).with_history(seen)


@pytest.fixture(params=_builders())
def sampler(request: pytest.FixtureRequest) -> object:
    build: Callable[[], object] = request.param
    return build()


class TestSamplerContract:
    def test_results_in_bounds_and_typed(self, sampler: URS | Perturb) -> None:
        rng = np.random.default_rng(0)
        for hp in _starts():
            for _ in range(100):
                new = sampler.neighbour(SPACE, hp, rng)
                check_hparams(SPACE, new)
                _check_types(new)

    def test_chains_stay_in_bounds(self, sampler: URS | Perturb) -> None:
        rng = np.random.default_rng(1)
        for hp in _starts()[:3]:
            for _ in range(300):
                hp = sampler.neighbour(SPACE, hp, rng)
                check_hparams(SPACE, hp)
                _check_types(hp)

    def test_names_preserved_in_order(self, sampler: URS | Perturb) -> None:
        rng = np.random.default_rng(2)
        for hp in _starts():
            new = sampler.neighbour(SPACE, hp, rng)
            assert list(new) == list(SPACE)

    def test_input_not_mutated(self, sampler: URS | Perturb) -> None:
        rng = np.random.default_rng(3)
        for hp in _starts():
            before = copy.deepcopy(hp)
            new = sampler.neighbour(SPACE, hp, rng)
            assert hp == before
            assert new is not hp
            new["lr"] = -1.0
            assert hp == before

    def test_space_not_mutated(self, sampler: URS | Perturb) -> None:
        space = dict(SPACE)
        sampler.neighbour(space, _corner("low"), np.random.default_rng(4))
        assert space == SPACE and list(space) == list(SPACE)

    def test_same_seed_same_output(self, sampler: URS | Perturb) -> None:
        for hp in _starts():
            a = [sampler.neighbour(SPACE, hp, np.random.default_rng(42)) for _ in range(3)]
            ra, rb = np.random.default_rng(7), np.random.default_rng(7)
            sa = [sampler.neighbour(SPACE, hp, ra) for _ in range(20)]
            sb = [sampler.neighbour(SPACE, hp, rb) for _ in range(20)]
            assert a[0] == a[1] == a[2]
            assert sa == sb

    def test_no_global_random_state(self, sampler: URS | Perturb) -> None:
        hp = _starts()[3]
        np.random.seed(0)
        random.seed(0)
        a = [sampler.neighbour(SPACE, hp, np.random.default_rng(9)) for _ in range(5)]
        np.random.seed(999)
        random.seed(999)
        np.random.random(17)
        random.random()
        b = [sampler.neighbour(SPACE, hp, np.random.default_rng(9)) for _ in range(5)]
        assert a == b
        # ...and it leaves the global streams alone.
        np.random.seed(5)
        expected = np.random.random()
        np.random.seed(5)
        sampler.neighbour(SPACE, hp, np.random.default_rng(9))
        assert np.random.random() == expected

    def test_uses_the_rng(self, sampler: URS | Perturb) -> None:
        hp = _starts()[3]
        outs = {json.dumps(sampler.neighbour(SPACE, hp, np.random.default_rng(s))) for s in range(20)}
        assert len(outs) > 10

    def test_describe_is_json_and_names_itself(self, sampler: URS | Perturb) -> None:
        d = sampler.describe()
        assert d["name"] in SAMPLERS
        assert isinstance(sampler, SAMPLERS[d["name"]])
        assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_make_sampler_builds_the_registered_class(name: str) -> None:
    assert type(make_sampler(name)) is SAMPLERS[name]


# --- URS -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0.02, 0.1])
def test_urs_stays_within_radius_in_normalised_coordinates(radius: float) -> None:
    urs = URS(radius=radius)
    rng = np.random.default_rng(10)
    for hp in _starts():
        for _ in range(100):
            new = urs.neighbour(SPACE, hp, rng)
            for name, p in SPACE.items():
                if isinstance(p, Choice) and not p.ordered:
                    continue
                # Discrete values sit at the centre of their slot, so they may land half a slot further.
                slack = 1e-9
                if isinstance(p, IntUniform):
                    slack += 0.5 / (p.high - p.low + 1)
                elif isinstance(p, Choice):
                    slack += 0.5 / len(p.values)
                assert abs(p.encode(new[name]) - p.encode(hp[name])) <= radius + slack, (name, hp[name], new[name])


def test_urs_box_is_uniform_around_the_value() -> None:
    p = Uniform(0.0, 10.0)
    urs = URS(radius=0.1)
    rng = np.random.default_rng(11)
    x = np.array([urs.neighbour({"x": p}, {"x": 5.0}, rng)["x"] for _ in range(4000)])
    assert x.min() >= 4.0 and x.max() <= 6.0
    assert x.min() < 4.05 and x.max() > 5.95
    assert abs(x.mean() - 5.0) < 0.05
    hist, _ = np.histogram(x, bins=4, range=(4.0, 6.0))
    assert hist.min() > 0.85 * 1000, hist


@pytest.mark.parametrize("at, inside", [(0.0, (0.0, 0.2)), (1.0, (0.8, 1.0))])
def test_urs_box_is_cut_at_the_bounds_not_clipped(at: float, inside: tuple[float, float]) -> None:
    p = Uniform(0.0, 1.0)
    urs = URS(radius=0.2)
    rng = np.random.default_rng(12)
    x = np.array([urs.neighbour({"x": p}, {"x": at}, rng)["x"] for _ in range(4000)])
    assert x.min() >= inside[0] and x.max() <= inside[1]
    # Clipping would put about half the draws exactly on the bound; cutting puts essentially none there.
    assert np.mean(x == at) < 0.01
    assert abs(x.mean() - sum(inside) / 2) < 0.01


def test_urs_moves_log_parameters_by_factors() -> None:
    p = LogUniform(1e-6, 1.0)  # six decades; radius 0.1 is +-0.6 decades
    urs = URS(radius=0.1)
    ratios = {}
    for start in (1e-4, 1e-2):
        rng = np.random.default_rng(13)
        moved = [float(urs.neighbour({"lr": p}, {"lr": start}, rng)["lr"]) for _ in range(2000)]
        ratios[start] = np.array(moved) / start
    r = ratios[1e-4]
    # The same draws move both starting points by the same factor, whatever the value's size.
    np.testing.assert_allclose(ratios[1e-4], ratios[1e-2], rtol=1e-9)
    assert r.min() >= 10 ** -0.6 * (1 - 1e-9) and r.max() <= 10 ** 0.6 * (1 + 1e-9)
    assert r.min() < 10 ** -0.55 and r.max() > 10 ** 0.55
    # Uniform in the log of the factor: its median is 1, not the arithmetic midpoint.
    assert abs(np.median(np.log10(r))) < 0.05
    assert abs(np.mean(r < 1) - 0.5) < 0.05


def test_urs_unordered_choice_keeps_value_or_resamples() -> None:
    p = Choice(["a", "b", "c", "d"])
    urs = URS(radius=0.2)
    rng = np.random.default_rng(14)
    x = [urs.neighbour({"c": p}, {"c": "b"}, rng)["c"] for _ in range(4000)]
    changed = np.mean([v != "b" for v in x])
    # Resampled with probability 0.2, and a fresh draw repeats "b" a quarter of the time: 0.2 * 0.75.
    assert abs(changed - 0.15) < 0.03
    assert set(x) == {"a", "b", "c", "d"}


def test_urs_int_small_radius_moves_to_neighbours() -> None:
    p = IntUniform(0, 100)
    urs = URS(radius=0.01)
    rng = np.random.default_rng(15)
    x = {urs.neighbour({"n": p}, {"n": 50}, rng)["n"] for _ in range(500)}
    assert x <= {49, 50, 51} and len(x) >= 2


def test_urs_full_radius_covers_the_whole_range() -> None:
    p = Uniform(0.0, 1.0)
    urs = URS(radius=1.0)
    rng = np.random.default_rng(16)
    x = np.array([urs.neighbour({"x": p}, {"x": 0.9}, rng)["x"] for _ in range(2000)])
    assert x.min() < 0.02 and x.max() > 0.98


def test_urs_explore_draws_from_the_whole_range_with_its_chance() -> None:
    p = Uniform(0.0, 1.0)
    urs = URS(radius=0.1, explore=0.4)
    rng = np.random.default_rng(17)
    x = np.array([urs.neighbour({"x": p}, {"x": 0.5}, rng)["x"] for _ in range(8000)])
    outside = (x < 0.4) | (x > 0.6)
    # A fresh draw lands outside the box 80% of the time: 0.4 * 0.8 of all draws.
    assert abs(outside.mean() - 0.32) < 0.02
    assert x.min() < 0.02 and x.max() > 0.98
    # Inside the box: the box's own draws (0.6) plus the fresh draws that land there (0.4 * 0.2).
    hist, _ = np.histogram(x, bins=10, range=(0.0, 1.0))
    assert hist[4] + hist[5] == pytest.approx(8000 * 0.68, rel=0.05)


def test_urs_explore_is_per_parameter() -> None:
    space = {"a": Uniform(0.0, 1.0), "b": Uniform(0.0, 1.0)}
    urs = URS(radius=0.05, explore=0.5)
    rng = np.random.default_rng(18)
    far = np.array([[abs(v - 0.5) > 0.05 for v in urs.neighbour(space, {"a": 0.5, "b": 0.5}, rng).values()]
                    for _ in range(4000)])
    # Each parameter leaves the box on its own (about 0.45 each), so both together about 0.2, not 0.45.
    assert abs(far.mean(axis=0) - 0.45).max() < 0.03
    assert abs(far.all(axis=1).mean() - 0.45 ** 2) < 0.03


def test_urs_without_explore_draws_the_same_numbers_as_the_plain_box() -> None:
    # explore = 0 takes no random number of its own, so runs made before the option are reproduced.
    hp = _starts()[3]
    a, b = np.random.default_rng(19), np.random.default_rng(19)
    for _ in range(50):
        assert URS(radius=0.3, explore=0.0).neighbour(SPACE, hp, a) == URS(radius=0.3).neighbour(SPACE, hp, b)
    assert URS(radius=0.3).describe() == {"name": "urs", "radius": 0.3}
    assert URS(radius=0.3, explore=0.2).describe() == {"name": "urs", "radius": 0.3, "explore": 0.2}


def test_tpe_keeps_its_explore_with_the_history() -> None:
    tpe = make_sampler("tpe", radius=0.3, explore=0.3)
    assert isinstance(tpe, TPE)
    bound = tpe.with_history([Observation({"lr": 0.1}, True)], radius=0.1)
    assert (bound.explore, bound.radius) == (0.3, 0.1)
    assert bound.describe() == {"name": "tpe", "radius": 0.1, "candidates": 16, "explore": 0.3}


# --- TPE -------------------------------------------------------------------------------------------------------


def test_tpe_without_history_is_urs() -> None:
    for hp in _starts():
        assert TPE(0.3).neighbour(SPACE, hp, np.random.default_rng(5)) == URS(0.3).neighbour(SPACE, hp,
                                                                                            np.random.default_rng(5))


def test_tpe_moves_towards_what_did_well_and_stays_in_the_box() -> None:
    start = {"lr": 1e-3, "dropout": 0.25, "layers": 4, "batch_size": 32, "optimizer": "rmsprop"}
    tpe, urs = _history_tpe(), URS(0.3)
    drawn = {name: [s.neighbour(SPACE, start, np.random.default_rng(i)) for i in range(200)]
             for name, s in (("tpe", tpe), ("urs", urs))}
    mean = {name: np.mean([d["dropout"] for d in rows]) for name, rows in drawn.items()}
    log_lr = {name: np.mean([math.log10(d["lr"]) for d in rows]) for name, rows in drawn.items()}
    assert mean["tpe"] > mean["urs"] + 0.05  # the box is [0.1, 0.4] here: the good side is up
    assert log_lr["tpe"] < log_lr["urs"] - 0.3
    adam = {name: sum(d["optimizer"] == "adam" for d in rows) for name, rows in drawn.items()}
    assert adam["tpe"] > 2 * adam["urs"]
    for d in drawn["tpe"]:
        assert abs(SPACE["dropout"].encode(d["dropout"]) - SPACE["dropout"].encode(0.25)) <= 0.3 + 1e-12
        assert abs(SPACE["lr"].encode(d["lr"]) - SPACE["lr"].encode(1e-3)) <= 0.3 + 1e-12


def test_tpe_with_one_candidate_or_too_little_history_takes_the_first_draw() -> None:
    hp = _starts()[4]
    first = URS(0.3).neighbour(SPACE, hp, np.random.default_rng(8))
    assert _history_tpe(candidates=1).neighbour(SPACE, hp, np.random.default_rng(8)) == first
    one_good = TPE(0.3).with_history([Observation(hp, True), Observation(hp, False)])
    assert one_good.neighbour(SPACE, hp, np.random.default_rng(8)) == first


def test_observations_label_each_sessions_best_quarter_and_never_a_diverged_member() -> None:
    rows = [[{"x": float(i)} for i in range(8)], [{"x": float(i)} for i in range(3)]]
    scores = [np.array([5.0, 1.0, np.nan, 3.0, 2.0, np.inf, 0.5, 4.0]), np.array([np.nan, np.inf, 9.0])]
    seen = observations(rows, scores)
    assert [o.hparams["x"] for o in seen if o.good] == [1.0, 6.0, 2.0]  # 6 finite -> 2 good; then the only finite
    assert len(seen) == 11 and all(not o.good for o in seen[8:10])
    assert observations([[{"x": 0.0}]], [np.array([np.nan])]) == [Observation({"x": 0.0}, False)]


def test_observations_with_starts_rank_by_how_much_each_member_improved() -> None:
    rows = [[{"x": float(i)} for i in range(4)]]
    # member 0 ends lowest but kept a winner's low start; member 3 fell the most
    seen = observations(rows, [np.array([0.10, 0.30, 0.35, 0.20])], [np.array([0.09, 0.31, 0.5, 0.6])])
    assert [o.hparams["x"] for o in seen if o.good] == [3.0]
    unknown = observations(rows, [np.array([0.1, 0.2, 0.3, 0.4])], [np.array([np.inf, 0.3, 0.3, 0.3])])
    assert not unknown[0].good  # a start that is not known is never good


@pytest.mark.parametrize("candidates", [0, -1, 1.5, True, "8"])
def test_tpe_bad_candidates(candidates: object) -> None:
    with pytest.raises(SamplerError, match=r"tpe: candidates must be an integer of at least 1") as err:
        TPE(candidates=candidates)  # type: ignore[arg-type]
    assert repr(candidates) in str(err.value)


def test_tpe_bad_radius_names_tpe() -> None:
    with pytest.raises(SamplerError, match=r"^tpe: radius must be in \(0, 1\], but got 0$"):
        make_sampler("tpe", radius=0)


# --- Perturb -------------------------------------------------------------------------------------------------


def _perturb_all(param: Any, value: Any, n: int = 400, seed: int = 20, **kw: Any) -> list[Any]:
    pert = Perturb(resample_probability=0.0, **kw)
    rng = np.random.default_rng(seed)
    return [pert.neighbour({"p": param}, {"p": value}, rng)["p"] for _ in range(n)]


@pytest.mark.parametrize("param, value", [(Uniform(0.0, 10.0), 5.0), (Uniform(-10.0, 10.0), 2.5),
                                          (LogUniform(1e-5, 1.0), 1e-3)], ids=repr)
def test_perturb_multiplies_by_0_8_or_1_2(param: Uniform, value: float) -> None:
    x = _perturb_all(param, value)
    assert all(type(v) is float for v in x)
    assert sorted({round(v / value, 12) for v in x}) == [0.8, 1.2]
    assert abs(np.mean([v > value for v in x]) - 0.5) < 0.1


def test_perturb_custom_factors() -> None:
    x = _perturb_all(Uniform(0.0, 100.0), 10.0, factors=(0.5, 2.0))
    assert set(x) == {5.0, 20.0}


@pytest.mark.parametrize("param, value, expected", [
    (Uniform(0.0, 1.0), 1.0, {0.8, 1.0}),
    (Uniform(0.0, 1.0), 0.9, {0.72, 1.0}),
    (LogUniform(0.1, 1.0), 0.1, {0.1, 0.12}),
    (Uniform(1.0, 2.0), 1.1, {1.0, 1.32}),
], ids=repr)
def test_perturb_clips_to_bounds(param: Uniform, value: float, expected: set) -> None:
    x = _perturb_all(param, value)
    assert {round(v, 12) for v in x} == expected
    assert all(param.low <= v <= param.high for v in x)


def test_perturb_value_at_high_times_1_2_stays_at_high() -> None:
    p = Uniform(0.0, 3.0)
    x = _perturb_all(p, 3.0)
    ups = [v for v in x if v >= 3.0]
    assert ups and all(v == 3.0 for v in ups)


def test_perturb_int_moves_at_least_one_step() -> None:
    p = IntUniform(0, 20)
    for value in range(1, 20):  # away from the bounds, a move is always possible
        x = _perturb_all(p, value, n=60, seed=value)
        assert all(type(v) is int for v in x)
        assert all(v != value for v in x), (value, set(x))
        assert {v > value for v in x} == {True, False}, (value, set(x))


@pytest.mark.parametrize("value, expected", [(50, {40, 60}), (10, {8, 12}), (1, {0, 2}), (2, {1, 3}),
                                             (0, {0, 1}), (100, {80, 100})])
def test_perturb_int_values(value: int, expected: set) -> None:
    assert set(_perturb_all(IntUniform(0, 100), value)) == expected


@pytest.mark.parametrize("values, value, expected", [
    ([8, 16, 32, 64], 16, {8, 32}),
    ([8, 16, 32, 64], 8, {8, 16}),
    ([8, 16, 32, 64], 64, {32, 64}),
    (["adam", "sgd", "rmsprop"], "sgd", {"adam", "rmsprop"}),
    (["only"], "only", {"only"}),
], ids=repr)
def test_perturb_choice_moves_to_adjacent_value(values: list, value: object, expected: set) -> None:
    assert set(_perturb_all(Choice(values), value)) == expected


def test_perturb_numeric_choice_moves_in_value_order() -> None:
    assert set(_perturb_all(Choice([32, 8, 16]), 32)) == {16, 32}


def test_perturb_always_resamples_with_probability_one() -> None:
    p = Uniform(0.0, 1.0)
    pert = Perturb(resample_probability=1.0)
    rng = np.random.default_rng(21)
    x = np.array([pert.neighbour({"x": p}, {"x": 0.5}, rng)["x"] for _ in range(2000)])
    assert not np.any(np.isclose(x, 0.4) | np.isclose(x, 0.6))
    assert x.min() < 0.02 and x.max() > 0.98


def test_perturb_resample_probability_is_respected() -> None:
    p = Uniform(0.0, 100.0)
    pert = Perturb(resample_probability=0.25)
    rng = np.random.default_rng(22)
    x = np.array([pert.neighbour({"x": p}, {"x": 50.0}, rng)["x"] for _ in range(4000)])
    moved_by_factor = np.isclose(x, 40.0) | np.isclose(x, 60.0)
    assert abs(moved_by_factor.mean() - 0.75) < 0.03


# --- options ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 0.0, -0.1, 1.0000001, 1.5, math.nan, math.inf, "0.1", None])
def test_urs_bad_radius(radius: object) -> None:
    with pytest.raises(SamplerError, match=r"urs: radius must be in \(0, 1\]") as err:
        URS(radius=radius)  # type: ignore[arg-type]
    assert repr(radius) in str(err.value)
    with pytest.raises(SamplerError):
        make_sampler("urs", radius=radius)  # type: ignore[arg-type]


@pytest.mark.parametrize("radius", [1e-6, 0.15, 1, 1.0])
def test_urs_good_radius(radius: float) -> None:
    assert make_sampler("urs", radius=radius).describe() == {"name": "urs", "radius": radius}


@pytest.mark.parametrize("build", [lambda: URS(radius=True), lambda: Perturb(resample_probability=False)],
                         ids=["urs-radius", "perturb-probability"])
def test_bool_options_rejected(build: Callable[[], object]) -> None:
    with pytest.raises(SamplerError):
        build()


@pytest.mark.parametrize("p", [-0.1, 1.1, math.nan, "0.5", None])
def test_perturb_bad_resample_probability(p: object) -> None:
    with pytest.raises(SamplerError, match=r"perturb: resample_probability must be in \[0, 1\]") as err:
        Perturb(resample_probability=p)  # type: ignore[arg-type]
    assert repr(p) in str(err.value)
    with pytest.raises(SamplerError):
        make_sampler("perturb", resample_probability=p)  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [-0.1, 1.1, math.nan, "0.5", None, True])
@pytest.mark.parametrize("name", ["urs", "tpe"])
def test_bad_explore(name: str, p: object) -> None:
    with pytest.raises(SamplerError, match=rf"{name}: explore must be in \[0, 1\]") as err:
        make_sampler(name, explore=p)  # type: ignore[arg-type]
    assert repr(p) in str(err.value)


@pytest.mark.parametrize("p", [0, 0.0, 0.5, 1, 1.0])
def test_perturb_good_resample_probability(p: float) -> None:
    assert make_sampler("perturb", resample_probability=p).describe()["resample_probability"] == p


@pytest.mark.parametrize("factors", [(1.2,), (0.8, 1.2, 1.5), (0.0, 1.2), (-0.8, 1.2), (0.8, "1.2")])
def test_perturb_bad_factors(factors: tuple) -> None:
    with pytest.raises(SamplerError, match=r"factors must be two positive numbers"):
        Perturb(factors=factors)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "URS", "random", "pbt", "perturb "])
def test_unknown_sampler_name(name: str) -> None:
    with pytest.raises(SamplerError, match=r"unknown sampler") as err:
        make_sampler(name)
    assert repr(name) in str(err.value)
    for known in SAMPLERS:
        assert known in str(err.value)


def test_sampler_error_is_a_value_error() -> None:
    assert issubclass(SamplerError, ValueError)
