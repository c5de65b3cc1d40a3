"""The quality benchmark: hsmpi against Hyperopt, Optuna, Propulate and random search.

`python -m benchmarks.quality` (or `scripts/benchmark_quality.py`) runs it; see
docs/benchmarks.md.  Every method gets the same task, model, initial weights,
optimizer and data split per seed, and the same total epoch budget S x M.
Every method selects on the validation loss and is judged on the test loss;
hsmpi too, on a task whose own objective is a metric (digits-cnn's accuracy).
The baselines need the `bench` extra (hyperopt, optuna, propulate, scipy).
"""
