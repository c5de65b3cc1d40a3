"""hsmpi.space: parameters validate when built, sample in bounds, encode to [0, 1] and back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hsmpi.algorithm.space import (
    Choice,
    IntUniform,
    LogUniform,
    Param,
    SpaceError,
    Uniform,
    check_hparams,
    describe_space,
    sample_space,
    validate_space,
)

DRAWS = 2000

REALS: list[Any] = [Uniform(-2.5, 3.0), LogUniform(1e-5, 1e-1)]
PARAMS: list[Any] = [
    Uniform(-2.5, 3.0),
    Uniform(0.0, 1.0),
    LogUniform(1e-5, 1e-1),
    LogUniform(0.5, 2.0),
    IntUniform(1, 10),
    IntUniform(-3, 3),
    IntUniform(0, 1),
    Choice([8, 16, 32, 64]),
    Choice([0.1, 0.5, 0.9]),
    Choice(["adam", "sgd", "rmsprop"]),
    Choice([True, False]),
    Choice(["only"]),
]


def _ids(params: list) -> list[str]:
    return [repr(p) for p in params]


def _expected_type(param: Any) -> type | tuple[type, ...]:
    if isinstance(param, IntUniform):
        return int
    if isinstance(param, Uniform):
        return float
    return object


# --- constructors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Uniform, LogUniform])
@pytest.mark.parametrize("low, high", [(1.0, 1.0), (2.0, 1.0), (0.5, -0.5)])
def test_real_bounds_must_be_increasing(cls: type, low: float, high: float) -> None:
    with pytest.raises(SpaceError, match=r"low < high") as err:
        cls(low, high)
    assert repr(low) in str(err.value) and repr(high) in str(err.value)


@pytest.mark.parametrize("low, high", [(3, 3), (5, 1)])
def test_int_bounds_must_be_increasing(low: int, high: int) -> None:
    with pytest.raises(SpaceError, match=r"low < high"):
        IntUniform(low, high)


@pytest.mark.parametrize("low", [0.0, -1e-3, -5.0])
def test_loguniform_needs_positive_low(low: float) -> None:
    with pytest.raises(SpaceError, match=r"LogUniform: low > 0") as err:
        LogUniform(low, 1.0)
    assert repr(low) in str(err.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", None, True, False, [1.0]])
@pytest.mark.parametrize("cls", [Uniform, LogUniform])
@pytest.mark.parametrize("which", ["low", "high"])
def test_real_bounds_must_be_finite_numbers(cls: type, which: str, bad: object) -> None:
    kwargs: dict[str, Any] = {"low": 0.5, "high": 2.0, which: bad}
    with pytest.raises(SpaceError, match=rf"{which} must be a finite number") as err:
        cls(**kwargs)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", [1.0, 2.5, "3", None, True, math.nan, np.float64(2.0)])
@pytest.mark.parametrize("which", ["low", "high"])
def test_intuniform_needs_integers(which: str, bad: object) -> None:
    kwargs: dict[str, Any] = {"low": 0, "high": 10, which: bad}
    with pytest.raises(SpaceError, match=rf"IntUniform: {which} must be an integer") as err:
        IntUniform(**kwargs)
    assert repr(bad) in str(err.value)


def test_real_bounds_accept_ints() -> None:
    p = Uniform(0, 10)
    assert p.contains(5) and p.contains(5.5)
    assert LogUniform(1, 100).contains(10.0)


@pytest.mark.parametrize("bad", ["abc", b"abc", 3, None, 1.5])
def test_choice_needs_a_list(bad: object) -> None:
    with pytest.raises(SpaceError, match=r"Choice: values must be a list") as err:
        Choice(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("empty", [[], (), iter([])])
def test_choice_must_not_be_empty(empty: object) -> None:
    with pytest.raises(SpaceError, match=r"must not be empty"):
        Choice(empty)


@pytest.mark.parametrize("values", [[1, 2, 1], ["a", "b", "a"], [32, 32.0]])
def test_choice_values_must_be_distinct(values: list) -> None:
    with pytest.raises(SpaceError, match=r"distinct") as err:
        Choice(values)
    assert repr(values) in str(err.value)


@pytest.mark.parametrize("bad", [None, [1], (1, 2), {"a": 1}, object()])
def test_choice_values_must_be_scalars(bad: object) -> None:
    with pytest.raises(SpaceError, match=r"numbers, strings or booleans") as err:
        Choice([1, bad])
    assert repr(bad) in str(err.value)


def test_choice_accepts_any_iterable_and_stores_a_tuple() -> None:
    c = Choice(x for x in (1, 2, 3))
    assert c.values == (1, 2, 3)
    assert Choice(range(3)).values == (0, 1, 2)


def test_choice_ordered_only_for_numbers() -> None:
    assert Choice([1, 2.5, 4]).ordered
    assert not Choice(["a", "b"]).ordered
    assert not Choice([True, False]).ordered
    assert not Choice([1, "a"]).ordered


def test_choice_rejects_nan() -> None:
    with pytest.raises(SpaceError):
        Choice([1.0, math.nan])


def test_parameters_are_frozen() -> None:
    p = Uniform(0.0, 1.0)
    with pytest.raises(AttributeError):
        p.low = 0.5  # type: ignore[misc]
    c = Choice([1, 2])
    with pytest.raises(AttributeError):
        c.values = (3,)  # type: ignore[misc]


# --- sampling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMS, ids=_ids(PARAMS))
def test_samples_in_bounds_and_typed(param: Any) -> None:
    rng = np.random.default_rng(0)
    want = _expected_type(param)
    for _ in range(DRAWS):
        v: Any = param.sample(rng)
        assert param.contains(v), v
        typed = isinstance(v, want)
        assert typed, (v, type(v))
        if isinstance(param, Uniform):
            assert not isinstance(v, bool)
            assert param.low <= v <= param.high
        if isinstance(param, Choice):
            assert v in param.values
            assert type(v) in {type(x) for x in param.values}


@pytest.mark.parametrize("param", PARAMS, ids=_ids(PARAMS))
def test_sample_is_deterministic_in_rng(param: Any) -> None:
    a = [param.sample(np.random.default_rng(7)) for _ in range(5)]
    b = [param.sample(np.random.default_rng(7)) for _ in range(5)]
    assert a == b
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    assert [param.sample(ra) for _ in range(50)] == [param.sample(rb) for _ in range(50)]


@pytest.mark.parametrize("param", [IntUniform(1, 5), Choice(["a", "b", "c"]), Choice([8, 16, 32, 64])],
                         ids=repr)
def test_discrete_samples_cover_every_value_evenly(param: Any) -> None:
    rng = np.random.default_rng(1)
    draws = [param.sample(rng) for _ in range(DRAWS * 3)]
    if isinstance(param, IntUniform):
        values: list[Any] = list(range(int(param.low), int(param.high) + 1))
    else:
        values = list(param.values)
    counts = {v: draws.count(v) for v in values}
    expected = len(draws) / len(values)
    assert all(0.8 * expected < c < 1.2 * expected for c in counts.values()), counts


def test_uniform_samples_spread_over_the_range() -> None:
    p = Uniform(-2.0, 6.0)
    rng = np.random.default_rng(2)
    x = np.array([p.sample(rng) for _ in range(DRAWS)])
    assert abs(np.mean(x) - 2.0) < 0.25
    assert x.min() < -1.8 and x.max() > 5.8


def test_loguniform_is_uniform_in_log_space() -> None:
    low, high = 1e-6, 1e-1
    p = LogUniform(low, high)
    rng = np.random.default_rng(3)
    x = np.array([p.sample(rng) for _ in range(4 * DRAWS)])
    logs = np.log10(x)
    # The median sits at the geometric mean, far below the arithmetic midpoint.
    geo = math.sqrt(low * high)
    assert abs(math.log10(np.median(x)) - math.log10(geo)) < 0.15
    assert np.median(x) < (low + high) / 2 / 100
    # Each decade gets about the same share of draws.
    hist, _ = np.histogram(logs, bins=5, range=(-6, -1))
    assert hist.min() > 0.8 * len(x) / 5 and hist.max() < 1.2 * len(x) / 5, hist


# --- encode / decode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMS, ids=_ids(PARAMS))
def test_encode_in_unit_interval(param: Any) -> None:
    rng = np.random.default_rng(4)
    for _ in range(500):
        u = param.encode(param.sample(rng))
        assert isinstance(u, float)
        assert 0.0 <= u <= 1.0


@pytest.mark.parametrize("param", [Uniform(-2.5, 3.0), LogUniform(1e-5, 1e-1), IntUniform(1, 10)], ids=repr)
def test_encode_clips_out_of_range_values(param: Any) -> None:
    span = param.high - param.low
    assert param.encode(param.high + span) == 1.0
    below = param.low / 10 if isinstance(param, LogUniform) else param.low - span
    assert param.encode(below) == 0.0


def test_real_encode_hits_the_ends() -> None:
    for p in REALS:
        assert p.encode(p.low) == pytest.approx(0.0, abs=1e-12)
        assert p.encode(p.high) == pytest.approx(1.0, abs=1e-12)
    assert Uniform(0.0, 4.0).encode(1.0) == pytest.approx(0.25)
    assert LogUniform(1e-4, 1.0).encode(1e-2) == pytest.approx(0.5)


@pytest.mark.parametrize("param", REALS, ids=_ids(REALS))
def test_real_round_trip(param: Any) -> None:
    rng = np.random.default_rng(5)
    for _ in range(DRAWS):
        v: Any = param.sample(rng)
        back = param.decode(param.encode(v))
        assert isinstance(back, float)
        assert back == pytest.approx(v, rel=1e-9, abs=1e-12)
    for u in np.linspace(0.0, 1.0, 101):
        assert param.encode(param.decode(float(u))) == pytest.approx(float(u), abs=1e-9)


@pytest.mark.parametrize("param", [IntUniform(1, 10), IntUniform(-3, 3), IntUniform(0, 1), IntUniform(-1000, 1000)],
                         ids=repr)
def test_int_round_trip_exact(param: Any) -> None:
    for v in range(param.low, param.high + 1):
        back = param.decode(param.encode(v))
        assert back == v and type(back) is int


def test_int_encode_gives_each_integer_an_equal_slice() -> None:
    p = IntUniform(0, 3)
    assert [p.encode(v) for v in range(4)] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert [p.decode(u) for u in (0.0, 0.24, 0.26, 0.5, 0.74, 0.76, 1.0)] == [0, 0, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("values", [[8, 16, 32, 64], [0.1, 0.5, 0.9], ["adam", "sgd", "rmsprop"], [True, False],
                                    [2, "a", 2.5, True], ["only"]], ids=repr)
def test_choice_round_trip_exact(values: list) -> None:
    c = Choice(values)
    for v in values:
        back = c.decode(c.encode(v))
        assert back == v and type(back) is type(v)


def test_choice_encode_is_slot_centre() -> None:
    c = Choice(["a", "b", "c", "d"])
    assert [c.encode(v) for v in "abcd"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert [c.decode(u) for u in (0.0, 0.3, 0.6, 1.0)] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("param", PARAMS, ids=_ids(PARAMS))
def test_decode_clips_outside_unit_interval(param: Any) -> None:
    lo, hi = param.decode(-0.5), param.decode(1.5)
    assert lo == param.decode(0.0) and hi == param.decode(1.0)
    assert param.contains(lo) and param.contains(hi)


def test_choice_index_matches_numbers_by_value_but_not_bools() -> None:
    c = Choice([16, 32, 64])
    assert c.index(32.0) == 1
    assert c.index(np.int64(64)) == 2  # type: ignore[arg-type]
    assert not c.contains(True)
    b = Choice([True, False])
    assert b.index(True) == 0 and b.index(False) == 1
    assert not b.contains(1) and not b.contains(0)
    s = Choice(["1", "2"])
    assert not s.contains(1)


def test_choice_index_error_names_the_value() -> None:
    c = Choice(["a", "b"])
    with pytest.raises(SpaceError, match=r"'z' is not one of \['a', 'b'\]"):
        c.encode("z")


@pytest.mark.parametrize("param, inside, outside", [
    (Uniform(0.0, 1.0), [0.0, 0.5, 1, 1.0], [-0.1, 1.1, math.nan, True, "0.5", None]),
    (LogUniform(1e-3, 1.0), [1e-3, 0.01, 1.0], [0.0, 2.0, -1.0, False]),
    (IntUniform(1, 4), [1, 4, np.int64(2)], [0, 5, 2.0, True, "2"]),
])
def test_contains(param: Uniform, inside: list, outside: list) -> None:
    assert all(param.contains(v) for v in inside)
    assert not any(param.contains(v) for v in outside)


def test_describe() -> None:
    assert Uniform(0.0, 1.0).describe() == {"type": "Uniform", "low": 0.0, "high": 1.0}
    assert LogUniform(1e-3, 1.0).describe() == {"type": "LogUniform", "low": 1e-3, "high": 1.0}
    assert IntUniform(1, 5).describe() == {"type": "IntUniform", "low": 1, "high": 5}
    assert Choice(("a", "b")).describe() == {"type": "Choice", "values": ["a", "b"]}


# --- spaces ----------------------------------------------------------------------------------------------------


def _space() -> dict[str, Param]:
    return {
        "lr": LogUniform(1e-4, 1e-1),
        "momentum": Uniform(0.0, 0.99),
        "layers": IntUniform(1, 4),
        "batch_size": Choice([16, 32, 64]),
        "optimizer": Choice(["adam", "sgd"]),
    }


def test_validate_space_returns_a_dict_copy() -> None:
    space = _space()
    out = validate_space(space)
    assert out == space and out is not space
    assert list(out) == list(space)


@pytest.mark.parametrize("bad", [None, [], [("lr", Uniform(0.0, 1.0))], "lr", 3, {}])
def test_validate_space_needs_a_nonempty_dict(bad: object) -> None:
    with pytest.raises(SpaceError, match=r"non-empty dict") as err:
        validate_space(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("name", ["", "1lr", "learning-rate", "has space", 3, None, ("a",)])
def test_validate_space_names_must_be_identifiers(name: object) -> None:
    with pytest.raises(SpaceError, match=r"identifiers") as err:
        validate_space({"ok": Uniform(0.0, 1.0), name: Uniform(0.0, 1.0)})
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("param", [(0.0, 1.0), [1, 2, 3], 0.5, "Uniform", None, {"low": 0, "high": 1}])
def test_validate_space_values_must_be_parameters(param: Any) -> None:
    with pytest.raises(SpaceError, match=r"lr must be hsmpi.Uniform, LogUniform, IntUniform or Choice") as err:
        validate_space({"lr": param})
    assert repr(param) in str(err.value)


@pytest.mark.parametrize("param", [
    IntUniform(0, 64), IntUniform(-4, 8), Uniform(1.0, 64.0), LogUniform(1.0, 64.0),
    Choice([0, 16, 32]), Choice([16.0, 32.0]), Choice([16, "32"]), Choice([True, 16]), Choice(["large"]),
], ids=repr)
def test_validate_space_rejects_bad_batch_size(param: Any) -> None:
    with pytest.raises(SpaceError, match=r"batch_size must be an IntUniform or Choice of positive integers"):
        validate_space({"lr": Uniform(0.0, 1.0), "batch_size": param})


@pytest.mark.parametrize("param", [IntUniform(1, 64), IntUniform(8, 9), Choice([1]), Choice([16, 32, 64])],
                         ids=repr)
def test_validate_space_accepts_good_batch_size(param: Any) -> None:
    validate_space({"batch_size": param})


def test_sample_space_keeps_order_and_validates() -> None:
    space = _space()
    rng = np.random.default_rng(6)
    for _ in range(200):
        hp = sample_space(space, rng)
        assert list(hp) == list(space)
        check_hparams(space, hp)
    a = sample_space(space, np.random.default_rng(11))
    b = sample_space(space, np.random.default_rng(11))
    assert a == b


def test_sample_space_uses_no_global_state() -> None:
    space = _space()
    np.random.seed(0)
    a = sample_space(space, np.random.default_rng(5))
    np.random.seed(123)
    np.random.random(10)
    b = sample_space(space, np.random.default_rng(5))
    assert a == b


def test_check_hparams_names_must_match() -> None:
    space = _space()
    hp = sample_space(space, np.random.default_rng(0))
    missing = dict(hp)
    del missing["lr"]
    with pytest.raises(SpaceError, match=r"do not match the space"):
        check_hparams(space, missing)
    with pytest.raises(SpaceError, match=r"do not match the space"):
        check_hparams(space, {**hp, "extra": 1})


@pytest.mark.parametrize("name, value", [("lr", 1.0), ("lr", 0.0), ("momentum", -0.1), ("layers", 5),
                                         ("layers", 2.0), ("batch_size", 48), ("optimizer", "adagrad"),
                                         ("momentum", math.nan)])
def test_check_hparams_values_must_be_in_range(name: str, value: object) -> None:
    space = _space()
    hp = {**sample_space(space, np.random.default_rng(0)), name: value}
    with pytest.raises(SpaceError, match=rf"hyperparameter {name}=") as err:
        check_hparams(space, hp)
    assert repr(value) in str(err.value)


def test_describe_space() -> None:
    space: dict[str, Param] = {"lr": LogUniform(1e-3, 1.0), "opt": Choice(["adam", "sgd"]), "n": IntUniform(1, 3)}
    d = describe_space(space)
    assert list(d) == ["lr", "opt", "n"]
    assert d["lr"] == {"type": "LogUniform", "low": 1e-3, "high": 1.0}
    assert d["opt"] == {"type": "Choice", "values": ["adam", "sgd"]}
    assert d["n"] == {"type": "IntUniform", "low": 1, "high": 3}
    import json

    assert json.loads(json.dumps(d)) == d
