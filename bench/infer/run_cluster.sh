#!/bin/sh
# The comm-bound `occult bench infer` runs of bench/RESULTS.md ("Inference"), section 2: 4 ranks over a
# 160 Mbit/s htb-shaped loopback (bench/cluster.sh; needs root). Prefill 8192 prompt tokens; decode
# batch 256. Usage: bench/infer/run_cluster.sh [BUILD_DIR] [RATE]   (from the repository root)
set -eu
build=${1:-build}
rate=${2:-160mbit}
for shape in "--batch 16 --prompt-tokens 512 --decode-steps 4" "--batch 256 --prompt-tokens 32 --decode-steps 16"; do
  echo "## $shape at $rate"
  # shellcheck disable=SC2086
  bash bench/cluster.sh --bandwidth "$rate" -- mpirun -np 4 "$build/occult" bench infer \
    --config bench/infer/model.json $shape --prune-devices 2 --repeats 2 --warmup 1 --no-progress
done
