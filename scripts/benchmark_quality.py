"""The quality benchmark (see docs/benchmarks.md): the same as `python -m hsmpi.quality`.

    mpirun -n 2 python scripts/benchmark_quality.py --ablation --sweep-m friedman1
    mpirun -n 2 python scripts/benchmark_quality.py --quick      # a smoke run, about a minute
"""

from hsmpi.quality.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
