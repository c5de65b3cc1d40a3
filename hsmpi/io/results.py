"""The results file: plain HDF5 (arrays and attributes, no pickles), written atomically.

Layout (S members, m sessions, R ranks):
- attributes of `/`: format, hsmpi version, task, population, ranks, every
  setting of the run (also as JSON in `config`), the space as JSON in `space`,
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
  `hparams/<name>` (S), `val_loss` (S, last session), `objective` (S, with a metric objective);
- `test/`: `best_loss` (the best member's test loss), `ensemble_loss` (the
  population's averaged prediction), `ensemble_members` (how many finite
  members were averaged), `metrics/<name>` (the best member's, for a task with metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from hsmpi import text
from hsmpi.io import hdf5
from hsmpi.io.files import array_bytes, write_atomic

FORMAT = "hsmpi-results"


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
        for name, array in population["weights"].items():
            hdf5.dataset(f, f"population/weights/{name}", array)
        for name, values in population["hparams"].items():
            hdf5.dataset(f, f"population/hparams/{name}", values)
        hdf5.dataset(f, "population/val_loss", population["val_loss"])
        if "objective" in population:
            hdf5.dataset(f, "population/objective", population["objective"])
        for key, value in test.items():
            if key == "metrics":
                for name, metric in value.items():
                    hdf5.dataset(f, f"test/metrics/{name}", metric)
            else:
                hdf5.dataset(f, f"test/{key}", value)
    write_atomic(path, fill, array_bytes([history, best, population]), "the results file")


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
