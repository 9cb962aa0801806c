#!/bin/sh
# The `occult bench infer` runs recorded in bench/RESULTS.md ("Inference"): 4 ranks, random weights of
# bench/infer/model.json (H=256, L=2, E=16, k=4, F=256), standard vs occult dispatch (+ pruning
# to M=2 devices). Prefill: 16 prompts x 512 tokens = 8192 prompt tokens; decode: batch 256.
# Usage: bench/infer/run.sh [BUILD_DIR]   (from the repository root)
set -eu
build=${1:-build}
mpi="mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np 4"
export OPENBLAS_NUM_THREADS=1
echo "## prefill: 16 x 512 prompt tokens, 4 decode steps"
$mpi "$build/occult" bench infer --config bench/infer/model.json --batch 16 --prompt-tokens 512 \
  --decode-steps 4 --prune-devices 2 --repeats 3 --warmup 1 --no-progress
echo "## decode: batch 256 x 32 prompt tokens, 16 decode steps"
$mpi "$build/occult" bench infer --config bench/infer/model.json --batch 256 --prompt-tokens 32 \
  --decode-steps 16 --prune-devices 2 --repeats 3 --warmup 1 --no-progress
