#!/bin/sh
# Every GPU check of docs/PERFORMANCE.md in one run (COCO 5K sizes, random embeddings).
# Usage: sh scripts/gpu_checks.sh [OUT_DIR]   -> prints and writes OUT_DIR/gpu_checks.txt
set -e
cd "$(dirname "$0")/.."
OUT=${1:-runs}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "== VHA + Mean, bf16 (timing target)"
  $PYTHON scripts/benchmark_eval.py --precision bf16
  echo "== VHA + Mean, tf32"
  $PYTHON scripts/benchmark_eval.py --precision tf32 --repeats 2
  echo "== VHA + Mean, fp32"
  $PYTHON scripts/benchmark_eval.py --precision fp32 --repeats 1
  for coding in THACoding VSACoding MixedCoding; do
    echo "== $coding, bf16, memory capped at 24 GB"
    $PYTHON scripts/benchmark_eval.py --precision bf16 --coding $coding --repeats 1 --memory_gb 24
  done
} 2>&1 | tee "$OUT/gpu_checks.txt"
