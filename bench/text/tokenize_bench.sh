#!/usr/bin/env bash
# Encode MB/s of occult's tokenizer and of the JavaScript reference on the same texts, one core,
# side by side. Usage (from the repository root):
#   bench/text/tokenize_bench.sh [BUILD_DIR] [JS_SCRATCH_DIR]
# BUILD_DIR defaults to build/, JS_SCRATCH_DIR (where `npm install @huggingface/tokenizers` was
# run) to /tmp/tokref; without it the JavaScript rows are skipped with a message.
set -euo pipefail
build=${1:-build}
scratch=${2:-/tmp/tokref}
repeats=5
min_bytes=$((4 << 20))
tokenizers=(data/tokenizers/qwen3 data/tokenizers/deepseek_v3)
texts=(data/corpus/tinyshakespeare.txt bench/text/multilingual.txt)

args=()
for t in "${tokenizers[@]}"; do args+=(--tokenizer "$t"); done
for x in "${texts[@]}"; do args+=(--text "$x"); done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
taskset -c 0 "$build/bench/text/bench_tokenize" "${args[@]}" --repeats $repeats \
  --min-bytes $min_bytes | tail -n +2 > "$out"
if command -v node > /dev/null && [ -d "$scratch/node_modules/@huggingface/tokenizers" ]; then
  taskset -c 0 node bench/text/tokenize_bench.mjs "$scratch" $repeats $min_bytes \
    "${tokenizers[@]}" -- "${texts[@]}" >> "$out"
else
  echo "tokenize_bench: no @huggingface/tokenizers under $scratch: JavaScript reference skipped" >&2
fi
echo "| tokenizer | text | MB | tokens | occult first MB/s | occult warm MB/s | JS first MB/s | JS warm MB/s | warm ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
awk '$1 == "occult" { k = $2 " " $3; b[k] = $4; n[k] = $5; of[k] = $6; ow[k] = $7; keys[++m] = k }
     $1 == "js" { k = $2 " " $3; jf[k] = $6; jw[k] = $7; jn[k] = $5 }
     END { for (i = 1; i <= m; ++i) { k = keys[i]; split(k, p, " ");
       same = (k in jn) ? (jn[k] == n[k] ? "" : " (token counts differ!)") : "";
       printf "| %s | %s | %.1f | %d | %s | %s | %s | %s | %s%s |\n", p[1], p[2], b[k] / 1e6, n[k],
         of[k], ow[k], (k in jf) ? jf[k] : "-", (k in jw) ? jw[k] : "-",
         (k in jw) ? sprintf("%.1fx", ow[k] / jw[k]) : "-", same } }' "$out"
