#!/usr/bin/env bash
# A Hugging Face model at a real model's size: writes a random-weight OLMoE directory with
# OLMoE-1B-7B's shapes (hidden 2048, 16 heads, 64 experts top-8, expert FFN 1024, vocab 50304;
# BF16, one shard per layer; never committed) and measures at 4 ranks, standard against occult
# dispatch in the same run: load time, peak RSS per rank and over all ranks against the weights'
# bytes, prefill tokens/s, decode ms/token and MoE bytes moved per token (occult bench infer).
#
# Usage: bench/hf/run.sh [BUILD_DIR] [LAYERS] [RANKS]
#   LAYERS defaults to 4 of OLMoE's 16: occult holds weights as F32 in memory (2x the BF16 file),
#   so the 16-layer model (13.8 GB BF16) does not fit this 24 GiB machine; per-layer figures
#   (load, prefill and decode time, bytes per token per layer) scale linearly with the layers.
# Results: BUILD_DIR/bench-hf/ (the checkpoint is reused when present; delete it to rewrite).
set -euo pipefail
build=${1:-build}
layers=${2:-4}
ranks=${3:-4}
out=$build/bench-hf
model=$out/olmoe-shapes-L$layers
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
if [ ! -f "$model/model.safetensors.index.json" ]; then
  "$build/bench/hf/bench_hf_checkpoint" --out "$model" --layers "$layers"
fi
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks")
"${mpi[@]}" "$build/occult" bench infer --model "$model" --batch 8 --prompt-tokens 128 --decode-steps 16 \
  --repeats 3 --warmup 1 --no-progress | tee "$out/olmoe-L$layers-np$ranks.txt"
echo "results: $out/olmoe-L$layers-np$ranks.txt (--json instead of --no-progress for machine-readable output)"
