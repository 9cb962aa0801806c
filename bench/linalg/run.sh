#!/usr/bin/env bash
# GEMM paths side by side: the per-shape GEMM table, then one MoE layer (E=64 k=6 H=1024 F=512,
# 1024 tokens per rank) at 1 and 4 ranks per GEMM library and precision. BEFORE=path/to/occult
# adds the same runs of another build (e.g. one from before a change) for comparison.
#   bench/linalg/run.sh [build-dir]
set -euo pipefail
build="${1:-build}"
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1)
shape=(--experts 64 --top-k 6 --hidden 1024 --ffn 512 --tokens-per-rank 1024 --iters 5 --warmup 1 --decode-tokens "")
"$build/bench/linalg/bench_gemm" --repeats 7
for np in 1 4; do
  if [ -n "${BEFORE:-}" ]; then
    echo "== $np ranks, $BEFORE, forward + backward"
    "${mpi[@]}" -np "$np" "$BEFORE" bench layer "${shape[@]}" --backward
  fi
  for gemm in onednn blas; do
    echo "== $np ranks, --gemm $gemm, forward + backward"
    "${mpi[@]}" -np "$np" "$build/occult" bench layer "${shape[@]}" --backward --gemm "$gemm"
  done
  for variant in "--compute f32" "--compute bf16" "--weights bf16 --compute f32" "--weights bf16 --compute bf16"; do
    echo "== $np ranks, $variant, forward"
    # shellcheck disable=SC2086
    "${mpi[@]}" -np "$np" "$build/occult" bench layer "${shape[@]}" $variant
  done
done
