"""Random streams keyed by what they belong to: the run seed, a stream kind, a member index.

Never by the rank: a member's draws are the same whichever rank holds it, so
results do not depend on how members are laid out over ranks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

# Stream kinds: what each seed belongs to.
INIT, DATA_ORDER, TORCH_RNG, HPARAMS, SELECTION, ENSEMBLE = 1, 2, 3, 4, 5, 6  # ENSEMBLE: --greedy-bags' resamples


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one stream, from the run seed and the stream's keys."""
    words = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def init_seed(seed: int, index: int, independent: bool) -> int:
    """Seed for a member's initial weights: shared by all members unless `independent`."""
    return derive_seed(seed, INIT, index) if independent else derive_seed(seed, INIT)


class SearchStreams:
    """The search's own streams (held by rank 0): one per member for its hyperparameter draws, one for
    the selection rule's choices."""

    def __init__(self, seed: int, population: int) -> None:
        self.hparams = [np.random.default_rng(derive_seed(seed, HPARAMS, i)) for i in range(population)]
        self.selection = np.random.default_rng(derive_seed(seed, SELECTION))

    def state_dict(self) -> dict[str, Any]:
        return {"hparams": json.dumps([r.bit_generator.state for r in self.hparams]),
                "selection": json.dumps(self.selection.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rng, saved in zip(self.hparams, json.loads(state["hparams"]), strict=True):
            rng.bit_generator.state = saved
        self.selection.bit_generator.state = json.loads(state["selection"])
