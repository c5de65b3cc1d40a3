#!/usr/bin/env bash
# The GPU check: GPU tests, the throughput benchmark and an end-to-end hsmpi run, in under 5 minutes.
# On a GPU machine that has PyTorch but no MPI (as lent to the project's sessions), from the project root:
#   source .device-kit/setup-mpi.sh && bash scripts/gpu_check.sh "$OUT"
# Everything it prints also goes to files in the output folder (default gpu-check/).
set -u
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
step() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; timeout -k 5 "$limit" "$@" 2>&1 | tee "$out/$name.txt"; echo "(exit ${PIPESTATUS[0]})"; }

step device 20 bash -c 'nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"'
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_vectorize.py tests/test_flatstate.py
step throughput 100 python3 scripts/benchmark_throughput.py --device cuda --members 8 64 512 4096 --epochs 3 \
  --max-sequential 64 --repeats 3
# The BatchNorm + dropout CNN (digits-cnn's model on the digits as tensors), batched through vmap.
step throughput-bn 60 python3 scripts/benchmark_throughput.py --device cuda --task digits-bn --members 8 64 512 \
  --epochs 2 --max-sequential 64 --repeats 3
# End to end through hsmpi's own loop: S = 512 members on one rank (vectorised), then on 4 ranks sharing the GPU.
step hsmpi-1rank 60 mpiexec -n 1 python3 -m hsmpi --task regression1d -S 512 -M 12 -m 3 --device cuda --out "$out/run1"
step hsmpi-4ranks 60 mpiexec -n 4 python3 -m hsmpi --task regression1d -S 512 -M 12 -m 3 --device cuda \
  --out "$out/run4"
step rates 20 python3 scripts/run_rates.py "$out/run1/results.h5" "$out/run4/results.h5"
