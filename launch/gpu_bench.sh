#!/usr/bin/env bash
# ImageNet throughput on a GPU machine: the ResNet-50 bf16 step, the streaming input with
# the machine's cores, and whether the input keeps the step fed; one table, <= 10 minutes.
#
# Usage (from the repository root, JAX with CUDA installed in .venv, e.g.
# `.venv/bin/uv pip install --python .venv/bin/python "jax[cuda12]"`):
#   launch/gpu_bench.sh                 # defaults: per-device batch 256, 224x224
#   launch/gpu_bench.sh --batch=128     # any flag of `python -m benchmarks.bench_gpu`
#   launch/gpu_bench.sh --smoke         # tiny sizes: checks the script on any machine
# Nothing is downloaded: the images are synthetic JPEGs written to a temporary folder.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
cd "$ROOT"
# The step's timing must not include other programs' use of the GPU: say what else runs.
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader || true
fi
exec timeout 600 "$PYTHON" -m benchmarks.bench_gpu "$@"
