"""hsmpi.text: every string hsmpi writes is safe for HDF5, JSON and a terminal, and still says what it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from hsmpi.algorithm.space import Choice, SpaceError
from hsmpi.io import hdf5
from hsmpi.text import clean, clean_tree, dumps

# What real MPIs return from MPI_Get_library_version, byte for byte (measured with mpi4py 4.1):
# Open MPI 5.0.11 counts its terminating NUL in the length; MPICH 5.0 spans several lines.
OPEN_MPI = ("Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11, repo rev: "
            "v5.0.11rc1, Sep 16, 2026\x00")
MPICH = "MPICH Version:      5.0.2\nMPICH Release date: unreleased development copy\nMPICH ABI:          17:2:5\n"


def test_open_mpis_trailing_nul_is_dropped_and_nothing_else_changes() -> None:
    assert clean(OPEN_MPI) == OPEN_MPI[:-1]
    assert clean(MPICH, lines=True) == MPICH
    assert clean(MPICH) == MPICH.replace("\n", "\\x0a")


@pytest.mark.parametrize("raw,expected", [
    ("a\x00b", "a\\x00b"),  # an embedded NUL is shown, not dropped
    ("red \x1b[31mtext", "red \\x1b[31mtext"),  # no terminal escape gets through
    ("bell\x07 del\x7f c1\x85", "bell\\x07 del\\x7f c1\\x85"),
    ("caf\udce9", "caf\ufffd"),  # a file name with a byte that is not UTF-8 (surrogateescape)
    ("half \ud800 pair", "half \ufffd pair"),
    (b"bytes \xff", "bytes \ufffd"),
    ("résumé, 東京, nbsp\xa0", "résumé, 東京, nbsp\xa0"),  # printable text of any script stays
    (3.5, "3.5"),
])
def test_clean(raw: object, expected: str) -> None:
    assert clean(raw) == expected
    assert clean(expected) == expected  # cleaning is idempotent


def test_tabs_and_newlines_stay_only_with_lines() -> None:
    assert clean("a\tb\nc", lines=True) == "a\tb\nc"
    assert clean("a\tb\nc") == "a\\x09b\\x0ac"
    assert clean("a\r\n", lines=True) == "a\\x0d\n"


def test_json_has_no_lone_surrogates_or_nuls_and_parses_strictly() -> None:
    value = {"mpi": OPEN_MPI, "path\udcff": ["x\x00y", 1, 2.5, None, True], "n": float("nan")}
    text = dumps(value)
    parsed = json.loads(text)
    assert parsed["mpi"] == OPEN_MPI[:-1]
    assert parsed["path\ufffd"][0] == "x\\x00y"
    assert text.encode("utf-8")  # a strict encoder takes it
    assert clean_tree(("a\x00",)) == ["a"]


def test_hdf5_takes_what_it_refuses_raw(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        with pytest.raises(ValueError, match="NUL"):  # h5py itself, the failure under Open MPI
            f.attrs["raw"] = OPEN_MPI
        hdf5.attr(f, "mpi", OPEN_MPI)
        hdf5.attr(f, "inner", "a\x00b")
        hdf5.dataset(f, "names", np.array(["ok", "x\x00y", "caf\udce9"], dtype=object))
        hdf5.dataset(f, "unicode", np.array(["é\x1b"]))
    with h5py.File(path, "r") as f:
        assert f.attrs["mpi"] == OPEN_MPI[:-1]
        assert f.attrs["inner"] == "a\\x00b"
        assert list(f["names"].asstr()[()]) == ["ok", "x\\x00y", "caf\ufffd"]
        assert list(f["unicode"].asstr()[()]) == ["é\\x1b"]


def test_a_choice_whose_text_would_not_come_back_is_refused_where_it_is_built() -> None:
    with pytest.raises(SpaceError, match="printable UTF-8 without control characters"):
        Choice(["relu", "tanh\x00"])
    with pytest.raises(SpaceError, match="printable"):
        Choice(["a", os.fsdecode(b"\xff")])
    assert Choice(["relu", "gelu (tanh)"]).values == ("relu", "gelu (tanh)")
