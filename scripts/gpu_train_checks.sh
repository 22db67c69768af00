#!/bin/sh
# The GPU figures of issue 12 in one run: training throughput of `chan` (BERT-base) and `asdg`
# (DistilBERT) at batch 128, eager and compiled, with 2 (the default) and 8 loader workers.
# Usage: sh scripts/gpu_train_checks.sh [OUT_DIR]   -> prints and writes OUT_DIR/gpu_train_checks.txt
set -e
cd "$(dirname "$0")/.."
OUT=${1:-runs}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  for config in chan asdg; do
    echo "== $config"
    $PYTHON scripts/benchmark_train.py --config "$config" --workers 2,8
  done
} 2>&1 | tee "$OUT/gpu_train_checks.txt"
