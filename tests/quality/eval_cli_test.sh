#!/bin/sh
# End-to-end check of `occult eval` as bench/quality.sh runs it, at 1 and 2 ranks: train a tiny
# checkpoint, fine-tune it with --init under pruning, then eval: --json has exactly the documented keys,
# the loss is the same at 1 rank and 2 ranks under either dispatcher, the profile -> place ->
# prune --embed-similarity placement drives similarity pruning (C_T = 1 at M = 1), and bad input
# gives one clear error line (exit status 1, no hang).
# Usage: eval_cli_test.sh OCCULT_BINARY MPIEXEC SOURCE_DIR SCRATCH_DIR
set -eu
occult=$1
mpi="$2 --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
src=$3
dir=$4
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
export OPENBLAS_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }
corpus=$src/data/corpus/tinyshakespeare.txt
head -c 1500 "$src/data/corpus/gsm8k-test.txt" > test.txt   # 1499 predictions = 23 x 64 + 27

"$occult" train --config "$src/configs/tiny.json" --data "$corpus" --steps 4 --batch 4 --seq-len 32 \
  --save base --no-progress > train.txt 2>&1 || fail "train: $(cat train.txt)"

ev() {  # ev OUT LAUNCHER... -- EVAL FLAGS (after the launcher, all flags go to occult eval)
  out=$1
  shift
  "$@" > "$out" 2> err.txt || fail "eval $*: $(cat err.txt)"
}
ev e1.json "$occult" eval --checkpoint base --data test.txt --seq-len 64 --json
ev e2o.json $mpi -np 2 "$occult" eval --checkpoint base --data test.txt --seq-len 64 --dispatch occult --json
ev e2s.json $mpi -np 2 "$occult" eval --checkpoint base --data test.txt --seq-len 64 --dispatch standard --json
num='[0-9.e+-]*'
grep -qx "{\"loss\":$num,\"perplexity\":$num,\"replicas_per_token\":$num,\"tokens\":1499,\"tokens_changed\":0.0}" e1.json \
  || fail "eval --json keys: $(cat e1.json)"
grep -q '"replicas_per_token":1.0,' e1.json || fail "1 rank: C_T must be 1: $(cat e1.json)"
field() { sed "s/.*\"$2\":\([^,}]*\).*/\1/" "$1"; }
same() {  # same A B: losses agree to 1e-5 relative
  awk -v a="$(field "$1" loss)" -v b="$(field "$2" loss)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * a) }' \
    || fail "loss differs: $1 $(cat "$1") vs $2 $(cat "$2")"
}
same e1.json e2o.json
same e1.json e2s.json
# The summary table names what was measured.
$mpi -np 2 "$occult" eval --checkpoint base --data test.txt --seq-len 64 --no-progress > table.txt 2> err.txt \
  || fail "eval table: $(cat err.txt)"
grep -q "loss (nats/byte)" table.txt || fail "no summary table: $(cat table.txt)"

# profile -> place -> prune --embed-similarity -> fine-tune under M = 1 similarity -> eval under it.
$mpi -np 2 "$occult" profile --checkpoint base --data "$corpus" --tokens 2048 --seq-len 64 --out t.safetensors \
  > /dev/null 2> err.txt || fail "profile: $(cat err.txt)"
"$occult" place --traces t.safetensors --devices 2 --strategy hypergraph --out place.json > /dev/null 2> err.txt \
  || fail "place: $(cat err.txt)"
"$occult" prune --traces t.safetensors --placement place.json --max-devices 1 --scheme similarity \
  --embed-similarity place-sim.json > /dev/null 2> err.txt || fail "prune --embed-similarity: $(cat err.txt)"
$mpi -np 2 "$occult" train --config "$src/configs/tiny.json" --data test.txt --steps 3 --batch 4 --seq-len 32 \
  --init base --placement place-sim.json --prune-devices 1 --prune-scheme similarity --save ft --no-progress \
  > ft.txt 2>&1 || fail "fine-tune: $(cat ft.txt)"
# Mixed-precision fine-tuning (BF16 GEMMs, F32 master weights): trains, saves and evaluates.
if grep -q avx512_bf16 /proc/cpuinfo; then
  $mpi -np 2 "$occult" train --config "$src/configs/tiny.json" --data test.txt --steps 3 --batch 4 --seq-len 32 \
    --init base --compute bf16 --save ft16 --no-progress > ft16.txt 2>&1 || fail "fine-tune --compute bf16: $(cat ft16.txt)"
  ev e16.json $mpi -np 2 "$occult" eval --checkpoint ft16 --data test.txt --seq-len 64 --compute bf16 --json
  grep -q '"loss":[0-9]' e16.json || fail "eval of the BF16 fine-tune: $(cat e16.json)"
fi
ev p2.json $mpi -np 2 "$occult" eval --checkpoint ft --data test.txt --seq-len 64 --placement place-sim.json \
  --prune-devices 1 --prune-scheme similarity --json
grep -q '"replicas_per_token":1.0,' p2.json || fail "M = 1: C_T must be 1: $(cat p2.json)"
grep -q '"tokens_changed":0.0}' p2.json && fail "M = 1 at 2 ranks changed no token: $(cat p2.json)"
ev q2.json $mpi -np 2 "$occult" eval --checkpoint ft --data test.txt --seq-len 64 --placement place-sim.json \
  --prune-devices 1 --prune-scheme similarity --dispatch standard --json
same p2.json q2.json

# Bad input: one error line from rank 0, exit status 1, no hang (timeout 60 s each).
expect_error() {
  pattern=$1
  shift
  if timeout 60 "$@" > out.txt 2> err.txt; then fail "accepted: $*"; fi
  [ "$(grep -c 'occult: error:' err.txt)" = "1" ] || fail "expected one error line for $*: $(cat err.txt)"
  grep -q -- "$pattern" err.txt || fail "error for $* lacks '$pattern': $(cat err.txt)"
}
expect_error "cannot read --data missing.txt" $mpi -np 2 "$occult" eval --checkpoint base --data missing.txt
expect_error "needs an expert similarity for layer 0 in the placement file; embed one with .occult prune --traces" $mpi -np 2 "$occult" eval --checkpoint base --data test.txt \
  --placement place.json --prune-devices 1 --prune-scheme similarity
expect_error "2 devices, but the run has 1 ranks" "$occult" eval --checkpoint base --data test.txt --placement place.json
expect_error "--seq-len must be in \[1, max_position_embeddings = 64\], got 65" "$occult" eval --checkpoint base \
  --data test.txt --seq-len 65
expect_error "--prune-devices must be in \[0, 2 ranks\], got 3" $mpi -np 2 "$occult" eval --checkpoint base \
  --data test.txt --prune-devices 3
echo "eval CLI OK"
