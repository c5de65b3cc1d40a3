"""The result does not depend on how members are laid out over ranks (CPU, same threads)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_hsmpi, task_spec


def _run(tmp_path: Path, ranks: int, extra: list[str]) -> h5py.File:
    out = tmp_path / f"n{ranks}"
    result = run_hsmpi(["--task", task_spec("Tiny"), "-S", "8", "-M", "6", "-m", "3", "--seed", "5",
                        "--threads", "1", "--out", str(out), *extra], ranks=ranks, timeout=180)
    assert result.returncode == 0, result.stderr
    return h5py.File(out / "results.h5", "r")


@pytest.mark.parametrize("extra", [[], ["--select", "truncation", "--sampler", "perturb"],
                                   ["--independent-init"]], ids=["winner-urs", "truncation-perturb", "indep"])
def test_one_rank_and_four_ranks_give_the_same_run(tmp_path: Path, extra: list[str]) -> None:
    one, four = _run(tmp_path, 1, extra), _run(tmp_path, 4, extra)
    assert one.attrs["ranks"] == 1 and four.attrs["ranks"] == 4
    for key in ("winner", "val_loss", "train_loss", "sources"):
        assert np.array_equal(one[f"history/{key}"][()], four[f"history/{key}"][()]), key
    for name in one["history/hparams"]:
        assert np.array_equal(one[f"history/hparams/{name}"][()], four[f"history/hparams/{name}"][()]), name
    for key in ("best_loss", "ensemble_loss"):
        assert one[f"test/{key}"][()] == four[f"test/{key}"][()]
    for name in one["population/weights"]:
        assert np.array_equal(one[f"population/weights/{name}"][()], four[f"population/weights/{name}"][()])
    # the run really explored: more than one distinct learning rate and batch size were tried
    assert len(np.unique(one["history/hparams/lr"][()])) > 4
    assert len(np.unique(one["history/hparams/batch_size"][()])) > 1
