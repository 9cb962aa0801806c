#!/usr/bin/env bash
# The model benchmark: validation loss of the demo config against the corpus's
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
python3 - "$out" "$cfg" "$(nproc)" <<'PY'
import json, sys
out, cfg_path, cores = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = json.load(open(cfg_path))
H, L, E, k, F, V = (c[key] for key in ("hidden_size", "num_hidden_layers", "num_experts",
                                      "num_experts_per_tok", "moe_intermediate_size", "vocab_size"))
S = c.get("n_shared_experts", 0) * F
T = 128
# Active matmul weights per token (as MoeTransformer::num_active_parameters): attention 4H^2,
# router E*H, shared 3*S*H, k routed experts 3*F*H per layer, plus the LM head V*H.
active = L * (4 * H * H + E * H + 3 * S * H + k * 3 * F * H) + V * H
flops_per_token = 6 * active + 12 * L * H * T
base = json.load(open(f"{out}/baseline.json"))
sgemm = base["sgemm_best_gflops"]
print(f"byte-unigram entropy (train split): {base['unigram_entropy_train']:.4f} nats/byte; "
      f"unigram cross-entropy on validation: {base['unigram_cross_entropy_val']:.4f}")
print(f"single-thread sgemm on the model's shapes: best {sgemm:.1f} GFLOP/s; "
      f"model FLOPs/token {flops_per_token / 1e6:.2f} M")
for np in (1, 4):
    r = json.load(open(f"{out}/train_np{np}.json"))
    evals = [json.loads(l) for l in open(f"{out}/train_np{np}.jsonl") if "val_loss" in l]
    curve = ", ".join(f"{e['step']}: {e['val_loss']:.3f}" for e in evals)
    used = min(np, cores)
    gflops = r["tokens_per_s"] * flops_per_token / 1e9
    print(f"ranks {np}: val loss {r['val_loss']:.4f}; tokens/s {r['tokens_per_s']:.0f}; "
          f"model {gflops:.2f} GFLOP/s on {used} core(s) = {100 * gflops / used / sgemm:.1f}% of sgemm; "
          f"bytes/step {r['bytes_per_step']:.0f} (standard {r['standard_bytes_per_step']:.0f}); "
          f"C_T {r['replicas_per_token']:.3f}; loss first/last {r['loss'][0]:.3f}/{r['loss'][-1]:.3f}; "
          f"val curve {curve}")
PY
