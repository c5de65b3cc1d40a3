"""The results file: everything readable with plain h5py, and consistent with itself."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import hsmpi
from hsmpi.engine.device import cpu_kernels
from hsmpi.io.results import read_results

from conftest import run_hsmpi, task_spec
from tasks_for_tests import Tiny, TinyAdam

S, M, SESSIONS = 4, 6, 3


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results")
    result = run_hsmpi(["--task", task_spec("Tiny"), "--select", "winner", "--elitism", "-S", str(S), "-M", str(M),
                        "-m", str(SESSIONS), "--seed", "2", "--threads", "1", "--out", str(out)], ranks=2, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"results: {out}/results.h5" in result.stdout
    return out / "results.h5"


def test_history_shapes_and_settings(results: Path) -> None:
    with h5py.File(results, "r") as f:
        assert f.attrs["format"] == "hsmpi-results"
        assert f.attrs["population"] == S and f.attrs["ranks"] == 2
        assert f.attrs["epochs"] == M and f.attrs["sessions"] == SESSIONS and f.attrs["sampler"] == "urs"
        assert json.loads(f.attrs["config"])["seed"] == 2
        assert set(json.loads(f.attrs["space"])) == set(Tiny.space)
        h = f["history"]
        for key in ("train_loss", "val_loss", "sources"):
            assert h[key].shape == (SESSIONS, S), key
        assert h["winner"].shape == (SESSIONS,) and h["epochs"][()].sum() == M
        for name in Tiny.space:
            assert h[f"hparams/{name}"].shape == (SESSIONS, S)
        for phase in ("train", "val", "select", "scatter", "bcast"):
            assert h[f"time/{phase}"].shape == (SESSIONS, 2)
        assert (h["time/train"][()] > 0).all()


def test_winner_is_the_argmin_and_keeps_its_hparams(results: Path) -> None:
    with h5py.File(results, "r") as f:
        h = f["history"]
        val, winner = h["val_loss"][()], h["winner"][()]
        assert np.array_equal(winner, np.argmin(np.where(np.isfinite(val), val, np.inf), axis=1))
        assert np.allclose(h["winner_loss"][()], val[np.arange(SESSIONS), winner])
        for k in range(SESSIONS - 1):
            w = winner[k]
            assert (h["sources"][k] == w).all()
            for name in Tiny.space:
                col = h[f"hparams/{name}"]
                assert col[k + 1, w] == col[k, w], name
            lr = h["hparams/lr"][()]
            others = [i for i in range(S) if i != w]
            assert all(lr[k + 1, i] != lr[k, i] for i in others)
        assert (h["sources"][SESSIONS - 1] == np.arange(S)).all()  # nobody copies after the last session


def test_best_is_the_best_ever_and_its_weights_are_there(results: Path) -> None:
    data = read_results(str(results))
    h, best = data["history"], data["best"]
    assert best["attrs"]["val_loss"] == h["winner_loss"].min()
    k = int(best["attrs"]["session"])
    assert best["attrs"]["member"] == h["winner"][k]
    for name in Tiny.space:
        assert best["hparams"][name] == h["hparams"][name][k, h["winner"][k]], name
    model = Tiny().model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in best["weights"].items() if k != "attrs"})
    pop = data["population"]
    assert all(v.shape[0] == S for k, v in pop["weights"].items() if k != "attrs")
    assert pop["val_loss"].shape == (S,) and pop["hparams"]["lr"].shape == (S,)
    test = data["test"]
    assert np.isfinite(test["best_loss"]) and np.isfinite(test["ensemble_loss"])
    assert test["ensemble_members"] == S


def test_string_choices_are_stored_as_text(results: Path) -> None:
    with h5py.File(results, "r") as f:
        values = {v.decode() for v in f["history/hparams/nesterov"][()].ravel()}
        assert values <= {"no", "yes"}


def test_python_api_returns_the_best_model(tmp_path: Path) -> None:
    result = hsmpi.run(TinyAdam(), population=3, epochs=4, sessions=2, seed=1, threads=1,
                       out=str(tmp_path), log=None)
    assert result.path == str(tmp_path / "results.h5")
    assert set(result.best_hparams) == set(TinyAdam.space)
    assert isinstance(result.best_model, torch.nn.Module)
    assert result.history["val_loss"].shape == (2, 3)
    # Without --elitism (the default) the best member is the last session's best; --returns auto (the
    # default) returns it or the population's average, and test_loss is the returned model's.
    x, y = TinyAdam().data(1)[2].tensors
    with torch.no_grad():
        member = torch.nn.functional.mse_loss(result.best_model(x), y).item()
        returned = torch.nn.functional.mse_loss(result.returned_model()(x), y).item()
    assert member == pytest.approx(result.member_test_loss, rel=1e-5)
    assert returned == pytest.approx(result.test_loss, rel=1e-5)
    if result.returned == "member":
        assert result.best_val_loss == result.history["winner_loss"][-1] and returned == member


@pytest.mark.both_mpis
def test_the_default_job_writes_a_results_file_that_plain_h5py_reads(tmp_path: Path) -> None:
    """The README's job as it stands (every default), on 2 ranks: the file any MPI's strings end up in."""
    from hsmpi.text import clean

    result = run_hsmpi(["--out", str(tmp_path)], ranks=2, timeout=300)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "results.h5", "r") as f:
        mpi = f.attrs["mpi"]
        assert mpi and "\x00" not in mpi and mpi == clean(mpi)
        assert f"MPI {mpi}" in result.stdout.splitlines()[0]  # the settings line names the same library
        assert (f.attrs["task"], f.attrs["ranks"], f.attrs["population"]) == ("regression1d", 2, 8)
        assert (f.attrs["torch_version"], f.attrs["cpu_kernels"]) == (torch.__version__, cpu_kernels())
        assert f["history/val_loss"].shape == (6, 8)
        assert np.isfinite(f["test/best_loss"][()])
        assert json.loads(f.attrs["config"])["select"] == "truncation"
    lines = (tmp_path / "lineage.jsonl").read_text().splitlines()
    assert [json.loads(line)["session"] for line in lines] == [1, 2, 3, 4, 5, 6]


@pytest.mark.both_mpis
def test_a_4_rank_run_of_a_task_file_gives_what_one_rank_gives(tmp_path: Path) -> None:
    """The held-out benchmark's shape (a task written only against the interface, 16 members on 4 ranks),
    with a held-back validation part: the same winners and losses as one process computes."""
    args = ["--task", task_spec("TinyAdam"), "-S", "16", "-M", "6", "-m", "3", "--seed", "3", "--threads", "1",
            "--holdout", "0.25", "--export-top", "1"]
    files = []
    for ranks in (4, 1):
        out = tmp_path / f"n{ranks}"
        done = run_hsmpi([*args, "--out", str(out)], ranks=ranks, timeout=300)
        assert done.returncode == 0, done.stderr
        files.append(out / "results.h5")
    with h5py.File(files[0], "r") as a, h5py.File(files[1], "r") as b:
        assert a.attrs["ranks"] == 4 and b.attrs["ranks"] == 1
        for key in ("history/val_loss", "history/winner", "history/sources", "test/best_loss"):
            assert np.array_equal(a[key][()], b[key][()]), key
        for name in a["population/weights"]:
            assert np.array_equal(a[f"population/weights/{name}"][()], b[f"population/weights/{name}"][()])
