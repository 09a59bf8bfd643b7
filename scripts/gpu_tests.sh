#!/usr/bin/env bash
# On a CUDA box without a package index (the H200 lease): install the wheels that
# scripts/device_wheels.py put in .whl, install cairn, then run the GPU suites.
# Extra arguments go to pytest (default: every test marked gpu).
#   bash scripts/gpu_tests.sh                       # everything marked gpu
#   bash scripts/gpu_tests.sh tests/tp -x           # one suite
set -euo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast stays off: a program using it can take a shared host's GPUs down.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -d .whl ] && [ ! -d /tmp/cairn-site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cairn-site .whl/*.whl
fi
export PYTHONPATH="/tmp/cairn-site:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The pytest executable, not `python -m pytest`: the repo's kernels/ would shadow HF's `kernels`.
if [ $# -eq 0 ]; then
  set -- -m gpu tests
fi
exec pytest -q -p no:cacheprovider "$@"
