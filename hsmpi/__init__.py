"""hsmpi: Hypersearch as an MPI job.

Each MPI rank trains population members; every session the member with the
best validation loss wins, its weights and optimizer state go to everyone,
and the others get hyperparameters sampled near the winner's.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hsmpi.algorithm.space import Choice, IntUniform, LogUniform, Uniform  # noqa: E402
from hsmpi.config import Config  # noqa: E402
from hsmpi.engine.finish import Result  # noqa: E402
from hsmpi.engine.job import run  # noqa: E402

__all__ = ["Choice", "IntUniform", "LogUniform", "Uniform", "run", "Config", "Result", "__version__"]
