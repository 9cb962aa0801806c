#!/usr/bin/env bash
# occult against a PyTorch standard-EP peer (bench/moe/torch_peer.py) in one run: the same
# shapes, the same imposed routing (a real trace layer), the same ranks; forward and
# forward+backward medians of the slowest rank, dispatch bytes summed over ranks, and the expert
# GEMMs alone (occult's compute floor, measured by bench layer in the same run).
# Needs Debian's python3-torch (`scripts/bootstrap.sh --peer`).
# Usage: bench/moe/peer.sh [BUILD=build] [RANKS=4] [TOKENS=1024] [ITERS=5]
# Environment: PLACEMENT (a placement JSON; default: hypergraph placed on TRACE), TRACE, LAYER,
# WRAP (a command prefix for both runs, e.g. "bench/cluster.sh --bandwidth 1gbit --").
set -euo pipefail
BUILD=${1:-build}
RANKS=${2:-4}
TOKENS=${3:-1024}
ITERS=${4:-5}
TRACE=${TRACE:-data/traces/dsv2lite-esft-intent.safetensors}
LAYER=${LAYER:-3}
PYTHON=${PYTHON:-/usr/bin/python3}
read -r -a WRAP <<< "${WRAP:-}"
SHAPE=(--experts 64 --top-k 6 --hidden 1024 --ffn 512 --tokens-per-rank "$TOKENS")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PYTHON" -c "import torch" 2> /dev/null || {
  echo "peer.sh: $PYTHON cannot import torch; run scripts/bootstrap.sh --peer" >&2
  exit 1
}
if [ -z "${PLACEMENT:-}" ]; then
  PLACEMENT=$out/placement.json
  "$BUILD/occult" place --traces "$TRACE" --devices "$RANKS" --out "$PLACEMENT" > /dev/null
fi

echo "== occult bench layer: standard and occult, F32 and BF16 wire, forward+backward ($RANKS ranks)" >&2
"${WRAP[@]}" mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$RANKS" \
  "$BUILD/occult" bench layer "${SHAPE[@]}" --routing-trace "$TRACE" --layer "$LAYER" \
  --placement "$PLACEMENT" --backward --iters "$ITERS" --warmup 1 --wire f32,bf16 --decode-tokens 1,8,64 \
  --json > "$out/train.json"
echo "== occult bench layer: BF16 compute, forward only" >&2
"${WRAP[@]}" mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$RANKS" \
  "$BUILD/occult" bench layer "${SHAPE[@]}" --routing-trace "$TRACE" --layer "$LAYER" \
  --placement "$PLACEMENT" --iters "$ITERS" --warmup 1 --wire bf16 --compute bf16 --decode-tokens "" \
  --json > "$out/bf16.json"
echo "== PyTorch peer (gloo, standard EP, the same placement)" >&2
"${WRAP[@]}" "$PYTHON" bench/moe/torch_peer.py --ranks "$RANKS" "${SHAPE[@]}" --routing-trace "$TRACE" \
  --layer "$LAYER" --placement "$PLACEMENT" --iters "$ITERS" --warmup 1 --json > "$out/peer.json"

"$PYTHON" - "$out" "$LAYER" <<'EOF'
import json, sys
d, layer = sys.argv[1], sys.argv[2]
train = json.load(open(f"{d}/train.json"))
bf16 = json.load(open(f"{d}/bf16.json"))
peer = json.load(open(f"{d}/peer.json"))
rows = []
for v in train["variants"]:
    rows.append((v["name"], "f32", v["forward_ms"], v["forward_ms"] + v["backward_ms"],
                 v["bytes"]["dispatch"] / 1e6, v.get("decode_ms", [])))
for v in bf16["variants"]:
    rows.append((v["name"] + " (bf16 compute)", "bf16", v["forward_ms"], None, v["bytes"]["dispatch"] / 1e6, []))
rows.append(("pytorch peer (gloo)", "f32", peer["forward_ms"], peer["forward_backward_ms"], peer["dispatch_mb"], []))
pf, pfb = peer["forward_ms"], peer["forward_backward_ms"]
print(f"{'variant':<30} {'compute':>7} {'fwd ms':>9} {'fwd+bwd ms':>11} {'vs peer':>8} {'dispatch MB':>12}  decode ms @1/8/64 tok")
print("-" * 110)
for name, compute, f, fb, mb, dec in rows:
    ratio = f"{fb / pfb:.2f}x" if fb else f"{f / pf:.2f}x"
    fbs = f"{fb:11.1f}" if fb else f"{'-':>11}"
    decs = "/".join(f"{x:.1f}" for x in dec) if dec else "-"
    print(f"{name:<30} {compute:>7} {f:9.1f} {fbs} {ratio:>8} {mb:12.2f}  {decs}")
print(f"sgemm floor of the expert shapes (bench layer, same run): {train['sgemm_gflops']:.1f} GFLOP/s per rank (f32), "
      f"{bf16['sgemm_gflops']:.1f} (bf16); vs peer: fwd+bwd time over the peer's (fwd only for bf16 compute)")
print(f"{train['num_devices']} ranks, E={train['experts']} k={train['top_k']} H={train['hidden']} F={train['ffn']}, "
      f"{train['tokens_per_rank']} tokens/rank, trace {train['routing_trace']} layer {layer}; "
      f"medians of {train['iters']} iterations, slowest rank")
EOF
