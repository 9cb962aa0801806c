#!/usr/bin/env bash
# A DeepSeek-V2 model at a real model's size: writes a random-weight deepseek_v2 directory with
# DeepSeek-V2-Lite's shapes (hidden 2048, 16 heads, q_lora_rank null, kv_lora_rank 512,
# qk_nope 128 / qk_rope 64 / v_head 128, 64 routed experts top-6 of width 1408, 2 shared
# experts, layer 0 dense of width 10944, vocab 102400; BF16, one shard per layer; never
# committed) with fewer layers than its 27, and measures at 4 ranks, standard against occult
# dispatch in the same run (occult bench infer): load time, peak RSS, prefill tokens/s, decode
# ms/step and MoE bytes moved per token. Then prints the KV-cache bytes per token of the latent
# cache occult keeps against a cache of full keys and values, both computed from config.json,
# and profiles the model's routing into a trace (E=64, k=6, the format of the shipped
# data/traces/dsv2lite-*.safetensors) that `occult place` and `occult evaluate` then read, and
# times one layer's latent-attention decode step absorbed against expanded (bench_mla_decode).
#
# Usage: bench/hf/deepseek_run.sh [BUILD_DIR] [LAYERS] [RANKS] [REPEATS]
#   LAYERS defaults to 4 (1 dense + 3 MoE layers, 4.4 GB of BF16 on disk; the whole 4-rank run
#   stays under 10 GB of RSS); per-layer figures scale linearly to V2-Lite's 27.
#   REPEATS (default 3) measured repeats after one warm-up, medians reported.
# Results: BUILD_DIR/bench-hf/ (the checkpoint is reused when present; delete it to rewrite).
set -euo pipefail
build=${1:-build}
layers=${2:-4}
ranks=${3:-4}
repeats=${4:-3}
out=$build/bench-hf
model=$out/dsv2lite-shapes-L$layers
report=$out/dsv2lite-L$layers-np$ranks.txt
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
if [ ! -f "$model/model.safetensors.index.json" ]; then
  "$build/bench/hf/bench_hf_checkpoint" --arch deepseek_v2 --out "$model" --layers "$layers"
fi
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks")
"${mpi[@]}" "$build/occult" bench infer --model "$model" --batch 8 --prompt-tokens 64 --decode-steps 16 \
  --repeats "$repeats" --warmup 1 --no-progress | tee "$report"

# KV-cache bytes per token (occult's cache holds F32): per layer, the latent cache keeps
# kv_lora_rank + qk_rope_head_dim floats; a full cache keeps every head's key
# (qk_nope_head_dim + qk_rope_head_dim) and value (v_head_dim).
python3 - "$model/config.json" <<'PY' | tee -a "$report"
import json, sys
c = json.load(open(sys.argv[1]))
L, NH = c["num_hidden_layers"], c["num_attention_heads"]
latent = c["kv_lora_rank"] + c["qk_rope_head_dim"]
k, v = NH * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]), NH * c["v_head_dim"]
print(f"KV cache per token per layer: latent {latent} floats = {latent * 4} B; "
      f"full K+V {k} + {v} floats = {(k + v) * 4} B ({(k + v) / latent:.2f}x the latent)")
print(f"KV cache per token, {L} layers: latent {latent * 4 * L} B; full {(k + v) * 4 * L} B; "
      f"27 layers (DeepSeek-V2-Lite): latent {latent * 4 * 27} B, full {(k + v) * 4 * 27} B")
PY

# Routing profile of 2048 fixed token ids (sequences of 256) -> place -> evaluate.
python3 -c 'import json; print(json.dumps([(i * 7919 + 13) % 102400 for i in range(2048)]))' > "$out/dsv2lite-ids.json"
"${mpi[@]}" "$build/occult" profile --model "$model" --input-ids "$out/dsv2lite-ids.json" --tokens 0 --seq-len 256 \
  --out "$out/dsv2lite-L$layers-trace.safetensors" --no-progress | tee -a "$report"
"$build/occult" place --traces "$out/dsv2lite-L$layers-trace.safetensors" --devices "$ranks" \
  --out "$out/dsv2lite-L$layers-placement.json" | tee -a "$report"
"$build/occult" evaluate --traces "$out/dsv2lite-L$layers-trace.safetensors" \
  --placement "$out/dsv2lite-L$layers-placement.json" | tee -a "$report"

# One layer's latent-attention decode step, absorbed against the expand-every-step reference.
"$build/bench/hf/bench_mla_decode" --rows 4 --contexts 256 1024 2048 --repeats 3 | tee -a "$report"
echo "results: $report"
