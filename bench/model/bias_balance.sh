#!/usr/bin/env bash
# Auxiliary-loss-free balancing: the same training run (configs/tiny-noaux.json: sigmoid scores,
# noaux_tc in 4 groups of 2) at several --bias-update-rate values (0 = off), at 2 ranks. Prints,
# per rate, the max/mean expert load (max over MoE layers) at the first step and averaged over the
# last 20 steps, and the final validation loss.
# Usage: bench/model/bias_balance.sh [BUILD_DIR] [STEPS] [LR] [RATE...]   (results in BUILD_DIR/bench-bias/)
set -euo pipefail
build=${1:-build}
steps=${2:-200}
lr=${3:-1e-3}
shift $(( $# < 3 ? $# : 3 ))
if [ $# -gt 0 ]; then rates=("$@"); else rates=(0 0.001 0.003 0.01); fi
here=$(cd "$(dirname "$0")/../.." && pwd)
out=$build/bench-bias
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
for r in "${rates[@]}"; do
  mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np 2 \
    "$build/occult" train --config "$here/configs/tiny-noaux.json" --data "$here/data/corpus/tinyshakespeare.txt" \
      --steps "$steps" --batch 16 --seq-len 64 --lr "$lr" --seed 1234 --eval-sequences 64 \
      --bias-update-rate "$r" --json --no-progress > "$out/rate_$r.json"
done
python3 - "$out" "${rates[@]}" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'rate':>8} {'max/mean load, step 1':>22} {'max/mean load, last 20':>23} {'val loss':>9}")
for r in sys.argv[2:]:
    j = json.load(open(f"{out}/rate_{r}.json"))
    ratios = j["max_load_ratio"]
    tail = ratios[-20:]
    print(f"{r:>8} {ratios[0]:>22.3f} {sum(tail) / len(tail):>23.3f} {j['val_loss']:>9.4f}")
PY
