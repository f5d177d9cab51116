#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install charrnn with JAX's CUDA wheels, check that JAX sees the
# GPU, run the tests that matter for devices, and print charrnn bench beside PyTorch's cuDNN LSTM
# at the same shape. Usage: bash scripts/gpu-check.sh [OUT_DIR]   (figures land in OUT_DIR, default gpu-check/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export PIP_DISABLE_PIP_VERSION_CHECK=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
python3.12 -m venv .venv-gpu
.venv-gpu/bin/pip install -q '.[cuda,test]'
.venv-gpu/bin/python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
# bf16 is the default precision on a GPU: a run's config says so.
.venv-gpu/bin/python -c "from charrnn.precision import default_dtype; d = default_dtype(); print('default dtype', d); assert d == 'bfloat16'"
# The device tests: placement, several devices against one, the cells against the textbook, training.
.venv-gpu/bin/pytest -q -n0 tests/test_placement.py tests/test_cells.py tests/test_recurrence.py tests/test_train.py | tail -3
.venv-gpu/bin/charrnn bench --cell lstm,gru --dtype all --json > "$out/charrnn-bench.json"
cat "$out/charrnn-bench.json"
# PyTorch with CUDA, in its own environment (it is no dependency of charrnn).
python3.12 -m venv .venv-torch
.venv-torch/bin/pip install -q torch numpy
.venv-torch/bin/python benchmarks/torch_speed.py --device cuda | tee "$out/torch-cuda.json"
