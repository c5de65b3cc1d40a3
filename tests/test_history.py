"""hsmpi.engine.history: one serialised form, read back exactly (the checkpoint's resume depends on it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from hsmpi.algorithm.plan import BEST_EVER
from hsmpi.algorithm.space import Choice, IntUniform, LogUniform
from hsmpi.engine.history import PHASES, History
from hsmpi.io import checkpoint, hdf5

SPACE = {"lr": LogUniform(1e-4, 1.0), "width": IntUniform(8, 64), "act": Choice(["relu", "tanh"]),
         "mixed": Choice([3, "two", True, 2.5]), "nesterov": Choice([False, True])}


def _history(ranks: list[int]) -> History:
    h = History()
    rng = np.random.default_rng(0)
    for k, r in enumerate(ranks):
        hps = [{"lr": float(rng.uniform()), "width": int(8 + k + i), "act": ["relu", "tanh"][i % 2],
                "mixed": [3, "two", True, 2.5][(i + k) % 4], "nesterov": bool(i % 2)} for i in range(3)]
        h.add(train_loss=rng.uniform(size=3), val_loss=np.array([0.3, math.nan, math.inf]), winner=0,
              winner_loss=0.3, hparams=hps, epochs=2 + k)
        h.set_plan(np.array([0, 0, BEST_EVER]), "" if k else "a note, é")
        h.add_times(rng.uniform(size=(r, len(PHASES))))
    return h


def _same(a: History, b: History) -> None:
    for name in ("train_loss", "val_loss", "sources"):
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(getattr(a, name), getattr(b, name))), name
    assert a.winner == b.winner and a.winner_loss == b.winner_loss and a.epochs == b.epochs and a.note == b.note
    assert a.hparams == b.hparams
    assert [type(v) for row in a.hparams for hp in row for v in hp.values()] == \
        [type(v) for row in b.hparams for hp in row for v in hp.values()]
    assert len(a.time) == len(b.time) and all(np.array_equal(x, y) for x, y in zip(a.time, b.time))


def test_state_dict_round_trips_through_a_file_with_the_space_types(tmp_path: Path) -> None:
    h = _history([2, 4, 1])  # a run resumed on more, then fewer ranks
    with h5py.File(tmp_path / "h.h5", "w") as f:
        group = hdf5.group(f, "history")
        for key, value in h.state_dict().items():
            if isinstance(value, dict):
                for name, array in value.items():
                    hdf5.dataset(group, f"{key}/{name}", array)
            else:
                hdf5.dataset(group, key, value)
    with h5py.File(tmp_path / "h.h5", "r") as f:
        back = History.from_state_dict(hdf5.read_group(f["history"]), SPACE)
    _same(h, back)


def test_time_rows_keep_each_sessions_rank_count() -> None:
    h = _history([2, 4, 1])
    padded = h.state_dict()["time"]["train"]
    assert padded.shape == (3, 4) and np.isnan(padded[0, 2:]).all() and np.isnan(padded[2, 1:]).all()
    assert [t.shape for t in History.from_state_dict(h.state_dict(), SPACE).time] == [(2, 6), (4, 6), (1, 6)]


def test_a_session_planned_again_replaces_its_plan_and_adds_its_times() -> None:
    h = _history([2])
    before = h.time[0].copy()
    h.set_plan(np.array([0, 1, 2]), "")
    h.add_times(np.ones((3, len(PHASES))))  # planned again on 3 ranks
    assert len(h.sources) == 1 and h.sources[0].tolist() == [0, 1, 2]
    assert h.time[0].shape == (3, 6) and np.allclose(h.time[0][:2], before + 1) and np.allclose(h.time[0][2], 1)


def test_the_lineage_record_says_who_copied_whom() -> None:
    h = _history([1])
    current = [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]
    line = h.lineage_record(0, current)
    assert line["session"] == 1 and line["epochs"] == 2 and line["winner"] == 0
    members = line["members"]
    assert "copied_from" not in members[0]
    assert members[1]["copied_from"] == 0 and members[1]["new_hparams"] == {"lr": 0.2}
    assert members[2]["copied_from"] == "best so far"
    assert members[1]["val_loss"] is None and members[2]["val_loss"] is None  # NaN and inf: no JSON number
    assert json.loads(json.dumps(line)) == line


def test_a_checkpoint_history_in_the_old_json_form_still_reads() -> None:
    old = {"json": json.dumps({"train_loss": [[0.5, 0.6]], "val_loss": [[0.4, None]], "winner": [0],
                               "winner_loss": [0.4], "sources": [[0, 0]], "hparams": [[{"lr": 0.1}, {"lr": 0.2}]],
                               "epochs": [3], "time": [[[0.1] * 6]], "note": [""]})}
    h = History.from_state_dict(old)
    assert h.winner == [0] and h.epochs == [3] and h.hparams[0][1] == {"lr": 0.2}
    assert h.state_dict()["time"]["train"].shape == (1, 1)


def test_the_checkpoint_reader_gives_back_the_groups_it_wrote(tmp_path: Path) -> None:
    state = {"history": _history([2]).state_dict(), "n": 3, "text": "a\x00b"}
    path = checkpoint.save(str(tmp_path), {"history": {**state["history"]}, "n": 3}, 0)
    back = checkpoint.read(path)
    assert back["n"] == 3
    _same(History.from_state_dict(back["history"], SPACE), _history([2]))


def test_start_scores_are_the_scores_of_the_states_each_member_began_with() -> None:
    h = History()
    for val, winner, sources in [([0.5, 0.2, 0.9], 1, [1, 1, 2]), ([0.4, 0.1, 0.8], 1, [1, 1, 1]),
                                 ([0.3, 0.15, 0.7], 1, [BEST_EVER] * 3)]:
        h.add(train_loss=np.ones(3), val_loss=np.array(val), winner=winner, winner_loss=val[winner],
              hparams=[{"lr": 0.1}] * 3, epochs=1)
        h.set_plan(np.array(sources), "")
    assert list(h.start_scores(0)) == [0.0, 0.0, 0.0]  # one shared start: ranked by where they ended
    assert list(h.start_scores(1)) == [0.2, 0.2, 0.9]  # member 2 kept its own state, 0 took member 1's
    assert list(h.start_scores(2)) == [0.1, 0.1, 0.1]
    h.add(train_loss=np.ones(3), val_loss=np.array([0.2, 0.3, 0.4]), winner=0, winner_loss=0.2,
          hparams=[{"lr": 0.1}] * 3, epochs=1)
    assert list(h.start_scores(3)) == [0.1, 0.1, 0.1]  # the best state so far: the lowest winner's score
