"""The results file: plain HDF5 (arrays and attributes, no pickles), written atomically.

Layout (S members, m sessions, R ranks):
- attributes of `/`: format, hsmpi version, task, population, ranks, every
  setting of the run (also as JSON in `config`), the space as JSON in `space`,
  `torch_version` and `cpu_kernels` (which vector kernels the ranks' CPU math
  ran, hsmpi.engine.device.kernels_of_ranks; runs agree to the bit only where
  they agree), `cpu_batching` (what `--vectorize auto` batched on the CPU,
  hsmpi.engine.batched.CPU_BATCHING; absent: nothing, one member at a time),
  `finite_model` (false: no member ever had a finite validation loss or objective);
- `history/`: `train_loss`, `val_loss` (m x S), `winner`, `winner_loss` (the
  winner's validation loss), `epochs` (m), `sources` (m x S: whose state each
  member took after the session; its own index = kept, -1 = the best state so
  far), `note` (m), `hparams/<name>` (m x S: the values each member trained
  with), `time/<phase>` (m x R seconds: train, val, select, scatter, bcast,
  checkpoint); for a task with metrics `metrics/<name>` (m x S, validation);
  when a metric chose the winners (an objective other than the loss) the
  attributes `objective` and `direction` and `winner_objective` (m);
- `best/`: the member returned (last session's best, or best ever with elitism): `weights/<tensor>`,
  `hparams/<name>` (scalars), attributes `val_loss`, `session`, `member`, and with
  a metric objective `objective`, `direction`, `objective_value`;
- `population/`: the final population: `weights/<tensor>` (S x shape),
  `hparams/<name>` (S), `val_loss` (S, last session), `objective` (S, with a metric objective).
  The weights were written by the ranks that own the members, each into its
  own file `population/<tag>/rankNNNNN.h5` (`weights/<tensor>`, its members'
  rows; attribute `members`); `population/weights/<tensor>` is an HDF5 virtual
  dataset over those files, named relative to results.h5, so plain h5py reads
  an (S, ...) array, also after the folder is moved (with the folder whole:
  rows of a missing file read as NaN).  The attribute `population_files` on `/`
  names the tag folder;
- `test/`: `best_loss` (the best member's test loss), `ensemble_loss` (the
  population's averaged prediction), `ensemble_members` (how many finite
  members were averaged), `ensemble_val_loss` (the average's validation loss,
  with --holdout on the held-back part), `metrics/<name>` (the best member's,
  for a task with metrics), `returned` ("member", "average" or "greedy": what the run
  returned, --returns), `returned_loss` (its test loss), `returned_why` (with --returns auto: why),
  `member_val_cv` (the best-member rule's score cross-validated), `judged_samples`
  (the size of the split that judged the choice), `judged_classes` (1: its
  targets are class labels), `member_val_median` (the
  averaged members' median score there); where the greedy ensemble was chosen
  (--returns greedy, or auto on 128 judged samples or more) `greedy_loss`,
  `greedy_val_loss`, `greedy_members` (how many distinct members) and
  `greedy_picks` (the sum of their weights); and when an average was returned
  `returned_metrics/<name>`, `average_members` (who it holds) and
  `average_counts` (each one's weight: 1 for the plain average).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from hsmpi import text
from hsmpi.io import hdf5
from hsmpi.io.files import array_bytes, write_atomic

FORMAT = "hsmpi-results"
PART_FORMAT = "hsmpi-population-part"
PARTS = "population"  # the folder of the ranks' population files, beside results.h5

Weights = dict[str, np.ndarray]
Shapes = dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, numpy dtype name) of one member


def part_file(tag: str, rank: int) -> str:
    """Rank `rank`'s population file, relative to the results file's folder."""
    return f"{PARTS}/{tag}/rank{rank:05d}.h5"


def write_part(out: str, name: str, members: Sequence[int], weights: Sequence[Callable[[], Weights]],
               shapes: Shapes) -> None:
    """Write one rank's members' final weights (`weights[j]()`: member `members[j]`'s, asked for one at a
    time, so no rank holds a second copy of all of them) as `name` under `out`."""
    path = os.path.join(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def fill(f: h5py.File) -> None:
        hdf5.attr(f, "format", PART_FORMAT)
        hdf5.attr(f, "members", np.asarray(members, dtype=np.int64))
        datasets = {n: hdf5.rows(f, f"weights/{n}", len(members), shape, dtype) for n, (shape, dtype) in shapes.items()}
        for j, get in enumerate(weights):
            for n, array in get().items():
                hdf5.write_row(datasets[n], j, array)
    nbytes = len(members) * sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    write_atomic(path, fill, nbytes, "the population's weights")


def prune_parts(out: str) -> list[str]:
    """Remove the population folders the results file in `out` does not name (an older results file's, or
    a write that did not complete); the names removed."""
    root = os.path.join(out, PARTS)
    if not os.path.isdir(root):
        return []
    named = ""
    try:
        with h5py.File(os.path.join(out, "results.h5"), "r") as f:
            named = str(f.attrs.get("population_files", ""))
    except (OSError, KeyError, ValueError):
        pass
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "s[0-9]*-*"))):
        if os.path.isdir(path) and os.path.basename(path) != named:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"{PARTS}/{os.path.basename(path)}")
    return removed


def _population_weights(f: h5py.File, parts: Sequence[tuple[str, Sequence[int]]], shapes: Shapes,
                        size: int) -> None:
    """`population/weights/<tensor>`: virtual datasets over the ranks' files (`parts`: file, its members)."""
    for n, (shape, dtype) in shapes.items():
        kind = np.dtype(dtype)
        layout = h5py.VirtualLayout(shape=(size, *shape), dtype=kind)
        for file, members in parts:
            source = h5py.VirtualSource(file, f"weights/{n}", shape=(len(members), *shape), dtype=kind)
            first = members[0] if members else 0
            if list(members) == list(range(first, first + len(members))):
                layout[first:first + len(members)] = source
            else:
                for j, i in enumerate(members):
                    layout[i] = source[j]
        fill = np.nan if kind.kind == "f" else 0
        f.create_virtual_dataset(f"population/weights/{n}", layout, fillvalue=fill)


def hparam_array(values: Sequence[Any]) -> np.ndarray:
    """A column of hyperparameter values as an HDF5-friendly array (strings as UTF-8)."""
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values], dtype=h5py.string_dtype())


def _attr(value: Any) -> Any:
    """Attribute values h5py can store: None becomes '', containers become JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return text.dumps(value)
    return value


def write_results(path: str, meta: Mapping[str, Any], config: Mapping[str, Any], space: Mapping[str, Any],
                  history: Mapping[str, Any], best: Mapping[str, Any], population: Mapping[str, Any],
                  test: Mapping[str, Any]) -> None:
    """Write the whole results file; every argument is a plain dict of arrays and numbers."""
    def fill(f: h5py.File) -> None:
        attrs = {"format": FORMAT, **meta, **config}  # a setting named like a meta field wins, as before
        for key, value in attrs.items():
            hdf5.attr(f, key, _attr(value))
        hdf5.attr(f, "config", text.dumps(dict(config)))
        hdf5.attr(f, "space", text.dumps(dict(space)))
        for key in ("train_loss", "val_loss", "winner", "winner_loss", "sources", "epochs"):
            hdf5.dataset(f, f"history/{key}", np.asarray(history[key]))
        hdf5.dataset(f, "history/note", np.asarray(history["note"], dtype=h5py.string_dtype()))
        for name, values in history["hparams"].items():
            hdf5.dataset(f, f"history/hparams/{name}", values)
        for phase, values in history["time"].items():
            hdf5.dataset(f, f"history/time/{phase}", values)
        for name, values in history.get("metrics", {}).items():
            hdf5.dataset(f, f"history/metrics/{name}", values)
        if "objective" in history:  # a task's metric chose the winners: which, and their values
            hdf5.dataset(f, "history/winner_objective", np.asarray(history["winner_objective"]))
            for key in ("objective", "direction"):
                hdf5.attr(f["history"], key, history[key])
        b = hdf5.group(f, "best")
        for key in ("val_loss", "session", "member", "objective", "direction", "objective_value"):
            if key in best:
                hdf5.attr(b, key, best[key])
        for name, array in best["weights"].items():
            hdf5.dataset(b, f"weights/{name}", array)
        for name, value in best["hparams"].items():
            hdf5.dataset(b, f"hparams/{name}", hparam_array([value])[0])
        if "weights" in population:  # in this file (tests and tools); a run's are in its ranks' files
            for name, array in population["weights"].items():
                hdf5.dataset(f, f"population/weights/{name}", array)
        else:
            hdf5.attr(f, "population_files", population["tag"])
            _population_weights(f, population["parts"], population["shapes"], len(population["val_loss"]))
        for name, values in population["hparams"].items():
            hdf5.dataset(f, f"population/hparams/{name}", values)
        hdf5.dataset(f, "population/val_loss", population["val_loss"])
        if "objective" in population:
            hdf5.dataset(f, "population/objective", population["objective"])
        for key, value in test.items():
            if isinstance(value, Mapping):  # metrics, returned_metrics
                for name, metric in value.items():
                    hdf5.dataset(f, f"test/{key}/{name}", metric)
            else:
                hdf5.dataset(f, f"test/{key}", value)
    write_atomic(path, fill, array_bytes([history, best, population]), "the results file")
    prune_parts(os.path.dirname(os.path.abspath(path)))


def read_results(path: str) -> dict[str, Any]:
    """The whole file as nested dicts of numpy arrays and attributes (for tests and tools)."""
    def walk(group: h5py.Group) -> dict[str, Any]:
        out: dict[str, Any] = {"attrs": dict(group.attrs)}
        for key, item in group.items():
            out[key] = walk(item) if isinstance(item, h5py.Group) else item[()]
        return out
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an hsmpi results file")
        return walk(f)
