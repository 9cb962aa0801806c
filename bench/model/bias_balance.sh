#!/usr/bin/env bash
# Auxiliary-loss-free balancing: the same training run (configs/tiny-noaux.json: sigmoid scores,
# noaux_tc in 4 groups of 2) without and with --bias-update-rate, at 2 ranks. Prints, per rate,
# the max/mean expert load (max over MoE layers) at the first step, averaged over the last 20
# steps, and the final validation loss.
# Usage: bench/model/bias_balance.sh [BUILD_DIR] [STEPS] [RATE]   (results go to BUILD_DIR/bench-bias/)
set -euo pipefail
build=${1:-build}
steps=${2:-200}
rate=${3:-0.001}
here=$(cd "$(dirname "$0")/../.." && pwd)
out=$build/bench-bias
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
for r in 0 "$rate"; do
  mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np 2 \
    "$build/occult" train --config "$here/configs/tiny-noaux.json" --data "$here/data/corpus/tinyshakespeare.txt" \
      --steps "$steps" --batch 16 --seq-len 64 --lr 3e-3 --seed 1234 --eval-sequences 64 \
      --bias-update-rate "$r" --json --no-progress > "$out/rate_$r.json"
done
python3 - "$out" 0 "$rate" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'rate':>8} {'max/mean load, step 1':>22} {'max/mean load, last 20':>23} {'val loss':>9}")
for r in sys.argv[2:]:
    j = json.load(open(f"{out}/rate_{r}.json"))
    ratios = j["max_load_ratio"]
    tail = ratios[-20:]
    print(f"{r:>8} {ratios[0]:>22.3f} {sum(tail) / len(tail):>23.3f} {j['val_loss']:>9.4f}")
PY
