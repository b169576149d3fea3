#!/bin/bash
# The GPU check: training images/s of resjax and of PyTorch on this machine's
# GPU (ResNet-20/56 and the plain nets, batch 128, both in one process:
# `python -m launch.bench train`), the time of the default collapse sweep
# (`python -m launch.sweep`), a grid's nets vmapped against one after another
# (`launch.bench layouts`) and what probes cost during training (`launch.bench
# probes`). A few minutes on one GPU; everything it prints
# is also written under OUTDIR (default runs/gpu_check).
#
#   bash launch/gpu_check.sh [OUTDIR]
#
# Needs the project installed (pip install -e '.[bench]') with CUDA builds of
# jax and torch.
set -euo pipefail
out="$(realpath -m "${1:-runs/gpu_check}")"  # Relative to where it is called from.
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Leave GPU memory for PyTorch too.

if ! python -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; then
  echo "error: JAX sees no GPU here; install a CUDA build (pip install 'jax[cuda12]') and rerun" >&2
  exit 2
fi
if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "error: PyTorch sees no GPU here; install a CUDA build of torch and rerun" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

python -m launch.bench train --out="$out/bench_train.json" 2>&1 | tee "$out/bench_train.log"

sweep="$out/collapse-$(date +%Y%m%d-%H%M%S)"  # A new directory: earlier results stay.
start=$(date +%s.%N)
python -m launch.sweep --workdir="$sweep" 2>&1 | tee "$out/collapse.log"
awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "collapse sweep, default grid: %.1f s wall (start-up and compile included)\n", e - s }' \
  | tee -a "$out/collapse.log"

# A grid's nets on one GPU: vmapped vs one after another (train.grid_layout).
python -m launch.bench layouts --out="$out/bench_layouts.json" 2>&1 | tee "$out/bench_layouts.log"

# What probes during training cost on the GPU: the 32-MLP grid with and without.
python -m launch.bench probes --out="$out/bench_probes.json" 2>&1 | tee "$out/bench_probes.log"
