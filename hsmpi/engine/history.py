"""What every session did, and the best member so far.

`History` is kept by rank 0.  It has one serialised form, `state_dict()`: the
arrays of the results file's `history/` group (sessions x members, and
sessions x ranks for the phase times).  The checkpoint stores the same
arrays, the report reads them from either file, and `lineage_record` gives
one session as the lineage log's JSON line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hsmpi.algorithm.plan import BEST_EVER
from hsmpi.algorithm.sampling import Observation, observations
from hsmpi.algorithm.space import Choice, HParams, IntUniform, Space
from hsmpi.io.results import hparam_array
from hsmpi.parallel.share import Saved
from hsmpi.tasks import Objective

PHASES = ("train", "val", "select", "scatter", "bcast", "checkpoint")
CHECKPOINT = PHASES.index("checkpoint")


@dataclass
class History:
    """Per-session records (rank 0); columns are member indices, time rows are (ranks, phases)."""

    train_loss: list[np.ndarray] = field(default_factory=list)
    val_loss: list[np.ndarray] = field(default_factory=list)
    winner: list[int] = field(default_factory=list)
    winner_loss: list[float] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    hparams: list[list[HParams]] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)
    note: list[str] = field(default_factory=list)
    metrics: dict[str, list[np.ndarray]] = field(default_factory=dict)  # the task's, on validation (S per row)
    winner_score: list[float] = field(default_factory=list)  # what selection compared (lower is better)
    objective: Objective = field(default_factory=Objective)

    def __len__(self) -> int:
        return len(self.winner)

    def add(self, *, train_loss: np.ndarray, val_loss: np.ndarray, winner: int, winner_loss: float,
            hparams: Sequence[HParams], epochs: int, winner_score: float | None = None,
            metrics: dict[str, np.ndarray] | None = None) -> None:
        """One session's losses (and metrics), winner and the hyperparameters every member trained with."""
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.winner.append(winner)
        self.winner_loss.append(winner_loss)
        self.winner_score.append(winner_loss if winner_score is None else winner_score)
        self.hparams.append([dict(hp) for hp in hparams])
        self.epochs.append(epochs)
        for name, values in (metrics or {}).items():
            self.metrics.setdefault(name, []).append(np.asarray(values, dtype=float))

    def last_scores(self) -> np.ndarray:
        """Every member's score in the last session (what its selection compared)."""
        return self.scores(len(self) - 1)

    def scores(self, k: int) -> np.ndarray:
        """Every member's score in session k (what its selection compared)."""
        if self.objective.is_loss:
            return self.val_loss[k]
        name = self.objective.name
        values = self.val_loss[k] if name == "loss" else self.metrics[name][k]
        scores = np.array([self.objective.score(float(v)) for v in values])
        scores[~np.isfinite(self.train_loss[k])] = np.inf
        return scores

    def start_scores(self, k: int) -> np.ndarray:
        """Every member's score when session k began: 0 for all in the first (one shared start, or starts
        not comparable), else the score of the state it took after session k - 1 (its own, its donor's, or
        for the best state so far the lowest finite winner's score before)."""
        population = len(self.val_loss[k])
        if k == 0:
            return np.zeros(population)
        before, sources = self.scores(k - 1), self.sources[k - 1]
        finite = [w for w in self.winner_score[:k] if math.isfinite(w)]
        best = min(finite) if finite else math.inf
        return np.array([best if s == BEST_EVER else before[s] for s in sources], dtype=float)

    def observations(self) -> list[Observation]:
        """Every member of every session so far, labelled by how far its score fell in its session (what
        `--sampler tpe` models)."""
        sessions = range(len(self))
        return observations(self.hparams, [self.scores(k) for k in sessions], [self.start_scores(k) for k in sessions])

    def set_plan(self, sources: np.ndarray, note: str) -> None:
        """The last session's plan: whose state each member took.  A session planned again (a finished run
        extended on resume) replaces its plan."""
        if len(self.sources) == len(self.winner):
            self.sources.pop()
            self.note.pop()
        self.sources.append(np.array(sources, dtype=np.int64))
        self.note.append(note)

    def add_times(self, times: np.ndarray) -> None:
        """Every rank's phase times for the last session; added to them when it is planned again."""
        if len(self.time) == len(self.winner):
            last = self.time[-1]
            width = max(last.shape[0], times.shape[0])
            self.time[-1] = _widen(last, width) + _widen(times, width)
        else:
            self.time.append(np.array(times, dtype=float))

    def set_checkpoint_time(self, seconds: float) -> None:
        """Rank 0's checkpoint seconds for the last session (known only once it is written)."""
        self.time[-1][0, CHECKPOINT] = seconds

    # ---- the one serialised form --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The results file's `history/` group: plain arrays (hparams/<name>, time/<phase> as groups)."""
        names = list(self.hparams[0][0]) if self.hparams else []
        extra: dict[str, Any] = {}
        if self.metrics:
            extra["metrics"] = {n: np.array(rows, dtype=float).reshape(len(self), -1)
                                for n, rows in self.metrics.items()}
        if not self.objective.is_loss:  # what chose each winner, and its value
            extra["objective"] = self.objective.name
            extra["direction"] = self.objective.direction
            extra["winner_objective"] = np.array([self.objective.value(v) for v in self.winner_score], dtype=float)
        return {
            **extra,
            "train_loss": np.array(self.train_loss, dtype=float).reshape(len(self), -1),
            "val_loss": np.array(self.val_loss, dtype=float).reshape(len(self), -1),
            "winner": np.array(self.winner, dtype=np.int64),
            "winner_loss": np.array(self.winner_loss, dtype=float),
            "sources": np.array(self.sources, dtype=np.int64).reshape(len(self.sources), -1),
            "epochs": np.array(self.epochs, dtype=np.int64),
            "note": np.array(self.note, dtype=object),
            "hparams": {n: np.stack([hparam_array([hp[n] for hp in row]) for row in self.hparams]) for n in names},
            "time": {p: _pad([t[:, j] for t in self.time]) for j, p in enumerate(PHASES)},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], space: Space | None = None,
                        objective: Objective | None = None) -> History:
        """The inverse of `state_dict`; with `space`, hyperparameters come back as the space's own values
        (a checkpoint's, for an exact resume).  Also reads the JSON form of checkpoints before 0.2."""
        if "json" in state:
            return _from_json(state["json"])
        if objective is None:
            objective = Objective(_text(state.get("objective", "loss")), _text(state.get("direction", "minimize")))
        rows = len(state["winner"])
        stored = state.get("hparams", {})
        names = [n for n in space if n in stored] if space is not None else list(stored)  # HDF5 sorts names
        columns = {n: np.asarray(stored[n]).tolist() for n in names}  # name -> (m, S)
        population = len(np.asarray(state["train_loss"])[0]) if rows else 0
        return cls(
            train_loss=[np.asarray(r, dtype=float) for r in np.asarray(state["train_loss"])],
            val_loss=[np.asarray(r, dtype=float) for r in np.asarray(state["val_loss"])],
            winner=[int(w) for w in np.asarray(state["winner"])],
            winner_loss=[float(v) for v in np.asarray(state["winner_loss"])],
            sources=[np.asarray(r, dtype=np.int64) for r in np.asarray(state["sources"])],
            hparams=[[{n: typed_value(space, n, columns[n][k][i]) for n in columns} for i in range(population)]
                     for k in range(rows)],
            epochs=[int(e) for e in np.asarray(state["epochs"])],
            time=_rows(state.get("time", {}), rows),
            note=[_text(n) for n in np.asarray(state["note"], dtype=object).tolist()],
            metrics={n: [np.asarray(r, dtype=float) for r in np.asarray(v)]
                     for n, v in state.get("metrics", {}).items()},
            winner_score=[objective.score(float(v)) for v in np.asarray(state["winner_objective"])]
            if "winner_objective" in state else [float(v) for v in np.asarray(state["winner_loss"])],
            objective=objective,
        )

    def lineage_record(self, k: int, current: Sequence[HParams]) -> dict[str, Any]:
        """Session k as the lineage log's line: every member's values and losses, and for each member that
        copied another, whom and the values it took (`current`: every member's hyperparameters now)."""
        sources = self.sources[k]
        members = []
        for i in range(len(sources)):
            s = int(sources[i])
            entry: dict[str, Any] = {"member": i, "hparams": self.hparams[k][i],
                                     "train_loss": _number(self.train_loss[k][i]),
                                     "val_loss": _number(self.val_loss[k][i])}
            if self.metrics:
                entry["metrics"] = {n: _number(rows[k][i]) for n, rows in self.metrics.items()}
            if s != i:
                entry["copied_from"] = "best so far" if s == BEST_EVER else s
                entry["new_hparams"] = current[i]
            members.append(entry)
        line: dict[str, Any] = {
            "session": k + 1, "epochs": int(self.epochs[k]), "epochs_done": int(sum(self.epochs[:k + 1])),
            "winner": int(self.winner[k]), "winner_val_loss": _number(self.winner_loss[k]),
            "note": self.note[k], "members": members}
        if not self.objective.is_loss:  # which objective chose the winner, and its value
            line["objective"] = {"name": self.objective.name, "direction": self.objective.direction,
                                 "winner_value": _number(self.objective.value(self.winner_score[k]))}
        return line


@dataclass
class Best:
    """The member the run will return: the last session's best, or with elitism the best ever.

    `score` is what it was judged on (its validation loss, or the objective
    signed so that lower is better; with --holdout, on the held-back part) and
    is known on every rank, and so are `session` and `member`; `hparams` on
    rank 0, and `state` (a copy of its weights and optimizer state) on the
    rank that owns that member only.  Before the first session it is member
    0's initial state.
    """

    score: float = math.inf
    session: int = -1
    member: int = 0
    hparams: HParams = field(default_factory=dict)
    state: Saved | None = None


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no inf/NaN: null means diverged


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def typed_value(space: Space | None, name: str, value: Any) -> Any:
    """A value read back from an array as the space's own value (its type, its exact choice)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    param = space.get(name) if space is not None else None
    if isinstance(param, Choice):
        for same_type in (True, False):  # the exact value first; stored as text, a mixed choice matches by str
            for choice in param.values:
                if (type(choice) is type(value) and choice == value) if same_type else str(choice) == str(value):
                    return choice
        return value
    if isinstance(param, IntUniform):
        return int(value)
    if param is not None:
        return float(value)
    return value


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of per-rank times as one (sessions, ranks) array; NaN where a resumed run had fewer ranks."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _rows(time: Mapping[str, Any], sessions: int) -> list[np.ndarray]:
    """The inverse of the padded (sessions, ranks) arrays: per session, (ranks it ran on, phases)."""
    if not time:
        return []
    table = np.stack([np.asarray(time[p], dtype=float) for p in PHASES], axis=-1)  # (sessions, ranks, phases)
    out = []
    for k in range(sessions):
        ran = ~np.isnan(table[k]).all(axis=1)
        out.append(table[k][: int(ran.sum()) if ran.any() else 0])
    return out


def _widen(times: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((width, times.shape[1]))
    out[: times.shape[0]] = times
    return out


def _from_json(text: str) -> History:
    """The history of a checkpoint written before 0.2 (one JSON attribute)."""
    j = json.loads(text)
    return History(
        train_loss=[np.array(r, dtype=float) for r in j["train_loss"]],
        val_loss=[np.array(r, dtype=float) for r in j["val_loss"]],
        winner=j["winner"], winner_loss=j["winner_loss"],
        sources=[np.array(r, dtype=np.int64) for r in j["sources"]],
        hparams=j["hparams"], epochs=j["epochs"], time=[np.array(t) for t in j["time"]], note=j["note"])
