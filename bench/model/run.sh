#!/usr/bin/env bash
# The model benchmark of issue 5: validation loss of the demo config against the corpus's
# byte-unigram entropy, the loss curve and tokens/s at 1 and 4 ranks, and model FLOP utilisation
# against the single-thread sgemm rate measured in the same run (bench_model).
# Usage: bench/model/run.sh [BUILD_DIR] [STEPS]   (results go to BUILD_DIR/bench-model/)
set -euo pipefail
build=${1:-build}
steps=${2:-300}
here=$(cd "$(dirname "$0")/../.." && pwd)
out=$build/bench-model
mkdir -p "$out"
cfg=$here/configs/demo.json
data=$here/data/corpus/tinyshakespeare.txt
common=(--config "$cfg" --data "$data" --steps "$steps" --batch 16 --seq-len 128 --lr 3e-3 --warmup 30
        --eval-every 100 --eval-sequences 64 --seed 1234 --no-progress)
export OPENBLAS_NUM_THREADS=1
"$build/bench/model/bench_model" --config "$cfg" --data "$data" --batch 16 --seq-len 128 --ranks 4 --json \
  > "$out/baseline.json"
for np in 1 4; do
  mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$np" \
    "$build/occult" train "${common[@]}" --dispatch occult --log "$out/train_np$np.jsonl" --json \
    > "$out/train_np$np.json"
done
python3 - "$out" "$(nproc)" <<'PY'
import json, sys
out, cores = sys.argv[1], int(sys.argv[2])
base = json.load(open(f"{out}/baseline.json"))
cfg = json.load(open(sys.argv[0] if False else f"{out}/../../configs/demo.json")) if False else None
print(f"byte-unigram entropy (train split): {base['unigram_entropy_train']:.4f} nats/byte; "
      f"unigram cross-entropy on validation: {base['unigram_cross_entropy_val']:.4f}")
print(f"single-thread sgemm on the model's shapes: best {base['sgemm_best_gflops']:.1f} GFLOP/s")
for np in (1, 4):
    r = json.load(open(f"{out}/train_np{np}.json"))
    evals = [json.loads(l) for l in open(f"{out}/train_np{np}.jsonl") if "val_loss" in l]
    curve = ", ".join(f"{e['step']}: {e['val_loss']:.3f}" for e in evals)
    print(f"ranks {np}: val loss {r['val_loss']:.4f}; tokens/s {r['tokens_per_s']:.0f}; "
          f"bytes/step {r['bytes_per_step']:.0f} (standard {r['standard_bytes_per_step']:.0f}); "
          f"C_T {r['replicas_per_token']:.3f}; val curve {curve}")
PY
