#!/usr/bin/env bash
# The main job on its embedded default (see README.md, "make demo"): train the default MoE
# transformer (configs/demo.json: 4 layers, 16 experts, top-4, one shared expert) on the shipped
# tinyshakespeare corpus on 4 local ranks with occult dispatch, about three minutes on 2 cores.
# Prints the progress bar (step, loss, tokens/s, bytes per step and what standard would move),
# then the summary table, a generated sample, a placement built from the trained model's routing
# (every strategy side by side), and draws the loss curve and C_T per layer (occult plot).
#
# Usage: scripts/demo.sh [BUILD_DIR] [--steps N] [--out DIR] [--ranks R] [-- TRAIN_FLAGS...]
#   --steps N   training steps (default 400; warm-up and evaluation scale with it)
#   --out DIR   where the log, checkpoint, routing, placement and pictures go (default BUILD_DIR/demo)
#   --ranks R   MPI ranks (default 4)
#   after --, flags passed on to `occult train` (e.g. -- --dispatch standard)
set -euo pipefail
build=build
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then build=$1; shift; fi
here=$(cd "$(dirname "$0")/.." && pwd)
steps=400
ranks=4
out=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "scripts/demo.sh: unknown option $1 (options: --steps N, --out DIR, --ranks R, -- TRAIN_FLAGS)" >&2
       exit 2 ;;
  esac
done
out=${out:-$build/demo}
mkdir -p "$out"
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks")

echo "== occult demo: training configs/demo.json on data/corpus/tinyshakespeare.txt," \
     "$ranks ranks, occult dispatch"
"${mpi[@]}" "$build/occult" train \
    --config "$here/configs/demo.json" \
    --data "$here/data/corpus/tinyshakespeare.txt" \
    --dispatch occult \
    --steps "$steps" --batch 16 --seq-len 128 --lr 3e-3 --warmup $((steps * 30 / 400)) \
    --eval-every $(( steps >= 4 ? steps / 4 : 1 )) --eval-sequences 64 --seed 1234 \
    --save "$out/checkpoint" --log "$out/train.jsonl" ${extra[@]+"${extra[@]}"}

echo "== sample (greedy) from the trained checkpoint"
"${mpi[@]}" "$build/occult" generate --checkpoint "$out/checkpoint" --prompt "ROMEO:" --max-new-tokens 200
echo "== expert placement from the trained model's own routing (profile -> place)"
"${mpi[@]}" "$build/occult" profile --checkpoint "$out/checkpoint" --data "$here/data/corpus/tinyshakespeare.txt" \
    --tokens 32768 --out "$out/routing.safetensors" --no-progress
"$build/occult" place --traces "$out/routing.safetensors" --devices "$ranks" --strategy all \
  --out "$out/placement.json"
echo "== pictures: the loss curve and C_T per layer of every strategy on the training text"
"$build/occult" plot train --in "$out/train.jsonl" --out "$out/loss.png"
for s in contiguous greedy-fps metis hypergraph; do
  "$build/occult" place --traces "$out/routing.safetensors" --devices "$ranks" --strategy "$s" \
    --out "$out/placement-$s.json" --json > "$out/place-$s.json"
done
"$build/occult" plot placement --in "$out/place-contiguous.json" --in "$out/place-greedy-fps.json" \
  --in "$out/place-metis.json" --in "$out/place-hypergraph.json" --out "$out/ct.png"
echo "== log: $out/train.jsonl, checkpoint: $out/checkpoint, placement: $out/placement.json"
echo "   (train again with --placement $out/placement.json to use it)"
