"""hdf5 writes what h5py's high-level calls write: same values, types, dtypes and shapes on reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hsmpi.io import hdf5

VALUES: dict[str, Any] = {
    "text": "hello",
    "empty text": "",
    "unicode": "η = 0.1 → ok",
    "int": 7,
    "negative int": -3,
    "float": 1.5,
    "nan": float("nan"),
    "bool": True,
    "numpy int": np.int64(4),
    "numpy float32": np.float32(0.25),
    "numpy bool": np.bool_(False),
    "float32 3-d": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "int64 column": np.arange(6, dtype=np.int64).reshape(6, 1),
    "bool array": np.array([True, False, True]),
    "uint8 bytes": np.frombuffer(b"\x00\x01\xff", dtype=np.uint8),
    "strings": np.asarray(["", "copied 3", "naïve"], dtype=h5py.string_dtype()),
    "object array of str": np.array([["relu", "tanh"], ["gelu", "relu"]], dtype=object),
    "empty": np.zeros(0),
    "0-d": np.array(2.5),
    "non-contiguous": np.arange(12.0).reshape(3, 4)[:, ::2],
}


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b)
        else:
            assert a.tolist() == b.tolist()
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


@pytest.mark.parametrize("key", list(VALUES))
def test_reads_back_like_h5py(tmp_path: Path, key: str) -> None:
    value = VALUES[key]
    with h5py.File(tmp_path / "high.h5", "w") as f:
        f[f"g/{key}"] = value
        if np.ndim(value) == 0:
            f.attrs[key] = value
    with h5py.File(tmp_path / "low.h5", "w") as f:
        hdf5.dataset(f, f"g/{key}", value)
        if np.ndim(value) == 0:
            hdf5.attr(f, key, value)
    with h5py.File(tmp_path / "high.h5") as high, h5py.File(tmp_path / "low.h5") as low:
        _same(high[f"g/{key}"][()], low[f"g/{key}"][()])
        assert high[f"g/{key}"].dtype == low[f"g/{key}"].dtype
        if np.ndim(value) == 0:
            _same(high.attrs[key], low.attrs[key])


def test_numpy_unicode_arrays_become_utf8_strings(tmp_path: Path) -> None:
    """h5py refuses numpy's fixed-width unicode; hdf5 stores it as h5py stores lists of str."""
    with h5py.File(tmp_path / "f.h5", "w") as f:
        hdf5.dataset(f, "u", np.array(["a", "bé"]))
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["u"].asstr()[()].tolist() == ["a", "bé"]


def test_attribute_arrays_and_groups(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.h5", "w") as f:
        g = hdf5.group(f, "a/b")
        hdf5.attr(g, "shape", np.array([3, 4]))
        hdf5.attr(g, "names", np.asarray(["x", "y"], dtype=h5py.string_dtype()))
        hdf5.group(g, "empty")
    with h5py.File(tmp_path / "f.h5") as f:
        assert isinstance(f["a/b"], h5py.Group) and isinstance(f["a/b/empty"], h5py.Group)
        assert f["a/b"].attrs["shape"].tolist() == [3, 4]
        assert list(f["a/b"].attrs["names"]) == ["x", "y"]


def test_existing_objects_are_not_replaced(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.h5", "w") as f:
        hdf5.attr(f, "a", 1)
        with pytest.raises((OSError, RuntimeError, ValueError)):
            hdf5.attr(f, "a", 2)
        hdf5.dataset(f, "d", np.zeros(2))
        with pytest.raises((OSError, RuntimeError, ValueError)):
            hdf5.dataset(f, "d", np.ones(2))
    with h5py.File(tmp_path / "f.h5") as f:
        assert f.attrs["a"] == 1 and f["d"][()].tolist() == [0.0, 0.0]


def test_python_objects_are_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises(TypeError, match="object array of NoneType, dict"):
            hdf5.dataset(f, "d", np.array([{"a": 1}, None], dtype=object))


ROWS: dict[str, tuple[tuple[int, ...], Any, list[Any]]] = {  # name: (one row's shape, dtype, the rows)
    "float32 matrix rows": ((2, 3), np.float32, [np.arange(6, dtype=np.float32).reshape(2, 3) * k for k in range(3)]),
    "scalar rows": ((), np.int64, [np.int64(5), np.array(-1), 7]),
    "float64 given to float32": ((4,), np.float32, [np.linspace(0, 1, 4), np.full(4, 1e-3)]),
    "empty rows": ((0,), np.float32, [np.zeros(0, dtype=np.float32)] * 2),
}


@pytest.mark.parametrize("key", list(ROWS))
def test_rows_written_one_at_a_time_read_back_like_h5py(tmp_path: Path, key: str) -> None:
    shape, dtype, rows = ROWS[key]
    with h5py.File(tmp_path / "high.h5", "w") as f:
        high = f.create_dataset("w/x", (len(rows), *shape), dtype=dtype)
        for j, row in enumerate(rows):
            high[j] = row
    with h5py.File(tmp_path / "low.h5", "w") as f:
        low = hdf5.rows(f, "w/x", len(rows), shape, dtype)
        for j, row in reversed(list(enumerate(rows))):  # in any order
            hdf5.write_row(low, j, row)
    with h5py.File(tmp_path / "high.h5") as high_file, h5py.File(tmp_path / "low.h5") as low_file:
        _same(high_file["w/x"][()], low_file["w/x"][()])
