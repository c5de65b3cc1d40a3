"""Member-steps per second of finished hsmpi runs, from their results files.

    python scripts/run_rates.py runs/a/results.h5 [more.h5 ...]

Training rate: S x steps per epoch x M over the slowest rank's training time;
end to end: the same over the whole run's wall time (start-up included).
"""

from __future__ import annotations

import json
import math
import sys

import h5py
import numpy as np

from hsmpi.tasks import load_task


def main() -> None:
    for path in sys.argv[1:]:
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
            task = load_task(config["task"])
            n_train = len(task.data(config["seed"])[0])
            steps = math.ceil(n_train / config["batch_size"])
            member_steps = int(f.attrs["population"]) * steps * int(f["history/epochs"][()].sum())
            train = np.nanmax(f["history/time/train"][()], axis=1).sum()
            wall = float(f.attrs["wall_seconds"])
            print(f"{path}: S={f.attrs['population']} on {f.attrs['ranks']} ranks ({f.attrs['device_type']}): "
                  f"{member_steps / train:,.0f} member-steps/s in training, {member_steps / wall:,.0f} end to end "
                  f"({wall:.1f}s wall, {train:.1f}s training)")


if __name__ == "__main__":
    main()
