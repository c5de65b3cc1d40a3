#!/usr/bin/env bash
# Install everything the tests need into a virtual environment and run the whole suite:
# lint and types, the MPI tests under `mpirun -n 2` and `-n 4`, then the serial tests
# (which launch their own mpirun jobs). Every stage runs inside `timeout`, so a hang fails.
#   bash scripts/test.sh            # uses .venv (HSMPI_TEST_VENV=path to choose another)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${HSMPI_TEST_VENV:-.venv}

set -e
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch is pinned: an unpinned torch pulls a CUDA build of several GB here.
python -m pip install -q "torch==2.13.0" -e ".[mpi,test,dev,bench]"
set +e

status=0
fail() { echo "FAILED: $1" >&2; status=1; }

ruff check hsmpi tests scripts || fail "ruff"
mypy hsmpi || fail "mypy"

logs=$(mktemp -d)
for n in 2 4; do
  echo "== MPI tests: mpirun -n $n python -m pytest --with-mpi -m mpi"
  # Rank 0 prints; the other ranks write to files shown only if the run fails.
  timeout -k 20 900 mpirun -n "$n" bash -c '
    if [ "${PMI_RANK:-0}" = 0 ]; then exec python -m pytest --with-mpi -m mpi -q -p no:cacheprovider tests
    else exec python -m pytest --with-mpi -m mpi -q -p no:cacheprovider tests > "$0/rank$PMI_RANK.log" 2>&1; fi' "$logs"
  rc=$?
  if [ $rc -ne 0 ]; then
    cat "$logs"/rank*.log 2>/dev/null | tail -n 60
    # exit 5 means pytest collected no test: that is a failure here, never a pass
    fail "MPI tests on $n ranks (exit $rc)"
  fi
  rm -f "$logs"/rank*.log
done

echo "== serial tests (they start their own mpirun jobs)"
timeout -k 20 2400 python -m pytest -q -p no:cacheprovider tests
rc=$?
[ $rc -eq 0 ] || fail "serial tests (exit $rc$([ $rc -eq 5 ] && echo ': no tests collected'))"
exit $status
