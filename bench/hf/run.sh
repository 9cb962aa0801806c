#!/usr/bin/env bash
# A Hugging Face model at a real model's size: writes a random-weight OLMoE directory with
# OLMoE-1B-7B's shapes (hidden 2048, 16 heads, 64 experts top-8, expert FFN 1024, vocab 50304;
# BF16, one shard per layer; never committed) and measures at 4 ranks, standard against occult
# dispatch in the same run: load time, peak RSS per rank and over all ranks against the weights'
# bytes, prefill tokens/s, decode ms/token and MoE bytes moved per token (occult bench infer).
#
# Usage: bench/hf/run.sh [BUILD_DIR] [LAYERS] [RANKS] [REPEATS]
#   LAYERS defaults to OLMoE's 16 (13.8 GB of BF16 on disk; occult holds it in BF16, --weights
#   auto); fewer layers make a quicker run whose per-layer figures scale linearly.
#   REPEATS (default 3) measured repeats after one warm-up, medians reported.
# Results: BUILD_DIR/bench-hf/ (the checkpoint is reused when present; delete it to rewrite).
set -euo pipefail
build=${1:-build}
layers=${2:-16}
ranks=${3:-4}
repeats=${4:-3}
out=$build/bench-hf
model=$out/olmoe-shapes-L$layers
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
if [ ! -f "$model/model.safetensors.index.json" ]; then
  "$build/bench/hf/bench_hf_checkpoint" --out "$model" --layers "$layers"
fi
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks")
"${mpi[@]}" "$build/occult" bench infer --model "$model" --batch 8 --prompt-tokens 128 --decode-steps 16 \
  --repeats "$repeats" --warmup 1 --no-progress | tee "$out/olmoe-L$layers-np$ranks.txt"
echo "results: $out/olmoe-L$layers-np$ranks.txt (--json instead of --no-progress for machine-readable output)"
