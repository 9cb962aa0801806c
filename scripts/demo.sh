#!/usr/bin/env bash
# The main job on its embedded default (see README.md, "make demo"): train the default MoE
# transformer (configs/demo.json: 4 layers, 16 experts, top-4, one shared expert) on the shipped
# tinyshakespeare corpus on 4 local ranks with occult dispatch, about two minutes on 2 cores.
# Prints the progress bar (step, loss, tokens/s, bytes per step and what standard would move),
# then the summary table, a generated sample, and a placement built from the trained model's
# routing (every strategy side by side). Extra arguments are passed to `occult train` (e.g. --steps 50).
set -euo pipefail
build=${1:-build}
shift || true
here=$(cd "$(dirname "$0")/.." && pwd)
ranks=${OCCULT_DEMO_RANKS:-4}
out=${OCCULT_DEMO_DIR:-$build/demo}
mkdir -p "$out"

echo "== occult demo: training configs/demo.json on data/corpus/tinyshakespeare.txt," \
     "$ranks ranks, occult dispatch"
mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks" \
  "$build/occult" train \
    --config "$here/configs/demo.json" \
    --data "$here/data/corpus/tinyshakespeare.txt" \
    --dispatch occult \
    --steps 400 --batch 16 --seq-len 128 --lr 3e-3 --warmup 30 \
    --eval-every 100 --eval-sequences 64 --seed 1234 \
    --save "$out/checkpoint" --log "$out/train.jsonl" "$@"

echo "== sample (greedy) from the trained checkpoint"
mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks" \
  "$build/occult" generate --checkpoint "$out/checkpoint" --prompt "ROMEO:" --max-new-tokens 200
echo "== expert placement from the trained model's own routing (profile -> place)"
mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks" \
  "$build/occult" profile --checkpoint "$out/checkpoint" --data "$here/data/corpus/tinyshakespeare.txt" \
    --tokens 32768 --out "$out/routing.safetensors" --no-progress
"$build/occult" place --traces "$out/routing.safetensors" --devices "$ranks" --strategy all \
  --out "$out/placement.json"
echo "== log: $out/train.jsonl, checkpoint: $out/checkpoint, placement: $out/placement.json"
echo "   (train again with --placement $out/placement.json to use it)"
