"""The quality benchmark (see docs/benchmarks.md): the same as `python -m benchmarks.quality` from the checkout.

    mpirun -n 2 python scripts/benchmark_quality.py --ablation --sweep-m friedman1
    mpirun -n 2 python scripts/benchmark_quality.py --quick      # a smoke run, about a minute
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, which holds benchmarks/
from benchmarks.quality.__main__ import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
