#!/usr/bin/env bash
# Reproduces the figures of bench/RESULTS.md ("Expert-parallel MoE layer") (run from the repository root, as root for
# the cluster emulation). BUILD defaults to build/. Each step prints a table; --json variants
# are easy to add. Takes a few minutes on a 2-core VM.
set -euo pipefail
BUILD=${BUILD:-build}
TRACE=${TRACE:-data/traces/dsv2lite-esft-intent.safetensors}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1)

echo "== 1. expert compute vs sgemm on the same shapes (1 rank)"
"${MPIRUN[@]}" -np 1 "$BUILD/occult" bench layer --experts 64 --top-k 6 --hidden 1024 --ffn 704 \
  --tokens-per-rank 2048 --iters 5 --warmup 1

echo "== 2. bytes on a real trace layer with a hypergraph placement (4 ranks)"
"$BUILD/occult" place --traces "$TRACE" --devices 4 --strategy hypergraph --out /tmp/occult-hg4.json
"${MPIRUN[@]}" -np 4 "$BUILD/occult" bench layer --experts 64 --top-k 6 --hidden 1024 --ffn 128 \
  --tokens-per-rank 512 --placement /tmp/occult-hg4.json --layer 3 --routing-trace "$TRACE" \
  --backward --iters 3 --warmup 1 --prune-devices 2 --prune-devices 1

echo "== 3. comm-bound cluster: 100 Mbit/s shared loopback (~2400 FLOP/B per rank, H100-NVLink-like)"
bench/cluster.sh --bandwidth 100mbit -- mpirun -np 4 "$BUILD/occult" bench layer --experts 64 --top-k 6 \
  --hidden 1024 --ffn 704 --tokens-per-rank 128 --placement /tmp/occult-hg4.json --layer 3 \
  --routing-trace "$TRACE" --backward --iters 5 --warmup 1 --prune-devices 2 --prune-devices 1

echo "== 4. wire formats and collectives: f32 vs bf16 vs f16, with decode-like latency (4 ranks)"
"${MPIRUN[@]}" -np 4 "$BUILD/occult" bench layer --experts 64 --top-k 6 --hidden 1024 --ffn 512 \
  --tokens-per-rank 256 --placement /tmp/occult-hg4.json --layer 3 --routing-trace "$TRACE" \
  --backward --iters 5 --warmup 1 --wire f32,bf16,f16 --decode-tokens 1,8,64

echo "== 5. wire formats on the comm-bound cluster (100 Mbit/s)"
bench/cluster.sh --bandwidth 100mbit -- mpirun -np 4 "$BUILD/occult" bench layer --experts 64 --top-k 6 \
  --hidden 1024 --ffn 512 --tokens-per-rank 128 --placement /tmp/occult-hg4.json --layer 3 \
  --routing-trace "$TRACE" --backward --iters 3 --warmup 1 --wire f32,bf16 --decode-tokens 1,8,64
