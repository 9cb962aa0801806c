#!/usr/bin/env bash
# occult against a PyTorch standard-EP peer (bench/moe/torch_peer.py) in one run: the same
# shapes, the same imposed routing (a real trace layer), the same ranks; forward and
# forward+backward medians of the slowest rank, dispatch bytes summed over ranks, and the expert
# GEMMs alone (each variant's compute floor, measured by bench layer between its iterations).
# Needs Debian's python3-torch (`scripts/bootstrap.sh --peer`).
# Usage: bench/moe/peer.sh [BUILD=build] [RANKS=4] [TOKENS=1024] [ITERS=5]
# Environment: PLACEMENT (a placement JSON; default: hypergraph placed on TRACE), TRACE, LAYER,
# WRAP (a command prefix for both runs, e.g. "bench/cluster.sh --bandwidth 1gbit --"), LINK (the
# rate of the one link every rank's traffic shares, e.g. 1gbit: adds the bound column
# max(bytes crossing it / LINK, compute floor) and each variant's time over it), OVERLAP (on: every
# occult variant's forward and backward overlap their exchanges with expert compute; default off).
set -euo pipefail
BUILD=${1:-build}
RANKS=${2:-4}
TOKENS=${3:-1024}
ITERS=${4:-5}
OVERLAP=${OVERLAP:-off}
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
  --overlap "$OVERLAP" --json > "$out/train.json"
echo "== occult bench layer: BF16 compute (mixed precision), BF16 wire, forward+backward" >&2
"${WRAP[@]}" mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$RANKS" \
  "$BUILD/occult" bench layer "${SHAPE[@]}" --routing-trace "$TRACE" --layer "$LAYER" \
  --placement "$PLACEMENT" --backward --iters "$ITERS" --warmup 1 --wire bf16 --compute bf16 --decode-tokens "" \
  --overlap "$OVERLAP" --json > "$out/bf16.json"
echo "== PyTorch peer (gloo, standard EP, the same placement)" >&2
"${WRAP[@]}" "$PYTHON" bench/moe/torch_peer.py --ranks "$RANKS" "${SHAPE[@]}" --routing-trace "$TRACE" \
  --layer "$LAYER" --placement "$PLACEMENT" --iters "$ITERS" --warmup 1 --decode-tokens 1,8,64 --json > "$out/peer.json"

"$PYTHON" - "$out" "$LAYER" "${LINK:-}" <<'EOF'
import json, re, sys
d, layer, link = sys.argv[1], sys.argv[2], sys.argv[3]
train = json.load(open(f"{d}/train.json"))
bf16 = json.load(open(f"{d}/bf16.json"))
peer = json.load(open(f"{d}/peer.json"))
link_bps = None
if link:
    m = re.fullmatch(r"([0-9.]+)([kmg]?)bit", link.lower())
    if not m:
        sys.exit(f"peer.sh: LINK={link}: expected a rate like 1gbit, 500mbit")
    link_bps = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]

def link_ms(v):
    # Every byte that leaves its rank crosses the one shared link: the four exchanges' rows and
    # the metadata (counted whole: a little above what leaves the rank).
    remote = sum(v["remote_bytes"].values()) + v["metadata_bytes"]
    return remote * 8 / link_bps * 1e3 if link_bps else None

rows = []
for doc, compute in ((train, "f32"), (bf16, "bf16")):
    for v in doc["variants"]:
        # Each variant's own floor, measured between its iterations (vs_floor: the median ratio).
        floor = v["floor_forward_ms"] + v["floor_backward_ms"]
        rows.append((v["name"], compute, v["forward_ms"], v["forward_ms"] + v["backward_ms"],
                     v["bytes"]["dispatch"] / 1e6, v.get("decode_ms", []), floor, v["vs_floor"], link_ms(v)))
rows.append(("pytorch peer (gloo)", "f32", peer["forward_ms"], peer["forward_backward_ms"], peer["dispatch_mb"],
             peer.get("decode_ms", []), None, None, None))
pfb = peer["forward_backward_ms"]
print(f"{'variant':<24} {'compute':>7} {'fwd ms':>8} {'fwd+bwd ms':>11} {'vs peer':>8} {'dispatch MB':>12} "
      f"{'floor ms':>9} {'vs floor':>9} {'link ms':>8} {'vs bound':>9}  decode ms @1/8/64 tok")
print("-" * 135)
for name, compute, f, fb, mb, dec, floor, vs_floor, lk in rows:
    bound = max(floor, lk or 0) if floor else None
    decs = "/".join(f"{x:.1f}" for x in dec) if dec else "-"
    print(f"{name:<24} {compute:>7} {f:8.1f} {fb:11.1f} {fb / pfb:7.2f}x {mb:12.2f} "
          f"{(f'{floor:.1f}' if floor else '-'):>9} {(f'{vs_floor:.2f}x' if vs_floor else '-'):>9} "
          f"{(f'{lk:.1f}' if lk else '-'):>8} {(f'{fb / bound:.2f}x' if bound else '-'):>9}  {decs}")
print(f"floor: the expert GEMMs alone on each variant's shapes, forward+backward, slowest rank, run between the "
      f"variant's own iterations (bench layer); vs floor: the median over iterations of time / floor "
      f"({train['sgemm_gflops']:.1f} GFLOP/s per rank f32, {bf16['sgemm_gflops']:.1f} bf16); "
      f"link: bytes leaving their rank / {link or 'LINK (unset)'}; vs bound: fwd+bwd over max(floor, link)")
print(f"{train['num_devices']} ranks, E={train['experts']} k={train['top_k']} H={train['hidden']} F={train['ffn']}, "
      f"{train['tokens_per_rank']} tokens/rank, trace {train['routing_trace']} layer {layer}; "
      f"medians of {train['iters']} iterations, slowest rank; vs peer: fwd+bwd time over the peer's")
EOF
