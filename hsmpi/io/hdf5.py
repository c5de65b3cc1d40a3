"""Filling a new HDF5 file quickly: attributes, datasets and groups through h5py's low-level calls.

hsmpi's results file and checkpoints are written once, into a new file, and
are mostly small objects (about 80 in a results file).  h5py's high-level
`group[name] = array` and `obj.attrs[name] = value` spend most of their time
per object in Python (dtype guessing, filter and shape checks, an existence
check and delete for attributes); these calls create the same objects
directly, at about half the cost (docs/performance.md has the figures).  What
they write reads back exactly as the high-level calls' output does (same
types, shapes, vlen UTF-8 strings, bool as HDF5 enum): tests/test_hdf5.py
compares the two.  Every string goes through hsmpi.io.text.clean first.

Only for new objects: an attribute or dataset that already exists is an
error (HDF5's "already exists"), never silently replaced.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5p, h5s, h5t

from hsmpi.text import clean

STRING = h5py.string_dtype()  # variable-length UTF-8, what h5py uses for Python str


def _link_plist() -> h5p.PropLCID:
    plist = h5p.create(h5p.LINK_CREATE)
    plist.set_create_intermediate_group(True)  # "a/b/c" creates a and a/b as needed
    plist.set_char_encoding(h5t.CSET_UTF8)
    return plist


_LCPL = _link_plist()


def as_array(value: Any) -> np.ndarray:
    """`value` as the C-contiguous array h5py would store: str (scalar or in arrays) as vlen UTF-8."""
    if isinstance(value, str):
        return np.array(clean(value, lines=True), dtype=STRING)
    array = np.asarray(value)
    text = array.dtype.kind == "U" or (array.dtype.kind == "O" and h5py.check_string_dtype(array.dtype) is not None)
    if array.dtype.kind == "O" and not text:
        kinds = {type(x) for x in array.flat}
        if not kinds <= {str}:
            raise TypeError(f"cannot store an object array of {', '.join(sorted(k.__name__ for k in kinds))}")
        text = True
    if text:
        # as h5py does: str arrays are vlen UTF-8; each string made safe (HDF5 refuses embedded NULs)
        cleaned = np.empty(array.shape, dtype=STRING)
        for index, x in np.ndenumerate(array):
            cleaned[index] = clean(x, lines=True)
        return cleaned
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return array


_TYPES: dict[tuple[np.dtype, bool], h5t.TypeID] = {}


def _type(dtype: np.dtype, logical: bool = False) -> h5t.TypeID:
    """HDF5's type for `dtype` (`logical`: as stored in the file), made once per numeric dtype: making one
    costs about as much as writing a small dataset.  Strings' types are made each time."""
    if dtype.kind == "O":
        return h5t.py_create(dtype, logical=logical)
    made = _TYPES.get((dtype, logical))
    if made is None:
        made = _TYPES[(dtype, logical)] = h5t.py_create(dtype, logical=logical)
    return made


def _name(name: str) -> bytes:
    return name.encode("utf-8")


def attr(obj: Any, name: str, value: Any) -> None:
    """Attribute `name` = `value` (str, number, bool or array) on the group, dataset or file `obj` (or the
    low-level id `dataset` returns)."""
    array = as_array(value)
    file_type = _type(array.dtype, logical=True)
    loc = obj if isinstance(obj, h5d.DatasetID) else obj.id
    handle = h5a.create(loc, _name(name), file_type, h5s.create_simple(array.shape))
    handle.write(array, mtype=_type(array.dtype))


def dataset(group: Any, path: str, value: Any) -> h5d.DatasetID:
    """Dataset at `path` (relative to `group`, parents made as needed) holding `value`, contiguous; its
    low-level id, which `attr` takes (no lookup by path)."""
    array = as_array(value)
    file_type = _type(array.dtype, logical=True)
    handle = h5d.create(group.id, _name(path), file_type, h5s.create_simple(array.shape), lcpl=_LCPL)
    if array.size:
        handle.write(h5s.ALL, h5s.ALL, array, mtype=_type(array.dtype))
    return handle


def rows(group: Any, path: str, count: int, shape: tuple[int, ...], dtype: Any) -> h5d.DatasetID:
    """A new numeric dataset at `path` of `count` rows of `shape`, each written later by `write_row` (one
    row at a time: whoever writes it need not hold them all at once); its low-level id."""
    file_type = _type(np.dtype(dtype), logical=True)
    return h5d.create(group.id, _name(path), file_type, h5s.create_simple((count, *shape)), lcpl=_LCPL)


def write_row(rows: h5d.DatasetID, row: int, value: Any) -> None:
    """Row `row` of a dataset that `rows` made = `value` (the row's shape; converted to the dataset's type)."""
    space = rows.get_space()
    dims = space.shape
    array = np.ascontiguousarray(value).reshape((1, *dims[1:]))
    if not array.size:
        return
    space.select_hyperslab((row, *(0 for _ in dims[1:])), array.shape)
    rows.write(h5s.create_simple(array.shape), space, array, mtype=_type(array.dtype))


def group(parent: Any, path: str) -> h5py.Group:
    """A new group at `path` under `parent` (parents made as needed)."""
    return h5py.Group(h5g.create(parent.id, _name(path), lcpl=_LCPL))


def read_group(group: h5py.Group) -> dict[str, Any]:
    """A group as a nested dict: attributes as Python scalars or arrays, datasets as arrays, groups as dicts."""
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        out[key] = value.item() if isinstance(value, np.generic) else value
    for key, item in group.items():
        out[key] = read_group(item) if isinstance(item, h5py.Group) else item[()]
    return out
