#!/bin/sh
# End-to-end check of `occult generate | profile | bench infer` as a user runs them, at 1 and 2
# ranks: train a tiny checkpoint, generate (identical text across rank counts and dispatchers),
# profile -> place -> evaluate -> prune, generate with that placement, bench infer --json keys,
# and bad input (one clear error, exit status 1, no hang).
# Usage: infer_cli_test.sh OCCULT_BINARY MPIEXEC SOURCE_DIR SCRATCH_DIR
set -eu
occult=$1
mpi="$2 --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
src=$3
dir=$4
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
export OPENBLAS_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }
corpus=$src/data/corpus/tinyshakespeare.txt

"$occult" train --config "$src/configs/tiny.json" --data "$corpus" --steps 4 --batch 4 --seq-len 32 \
  --save ckpt --no-progress > train.txt 2>&1 || fail "train: $(cat train.txt)"

# Greedy generation: the same bytes at 1 rank, at 2 ranks, and with either dispatcher.
printf 'First Citizen:\nBefore we proceed\n\nAll:\n' > prompts.txt
gen() {  # gen OUT DISPATCH LAUNCHER...
  out=$1 dispatch=$2
  shift 2
  "$@" "$occult" generate --checkpoint ckpt --prompt "ROMEO:" --prompt-file prompts.txt --max-new-tokens 12 \
    --temperature 0 --json --dispatch "$dispatch" > "$out" 2> err.txt || fail "generate $*: $(cat err.txt)"
}
gen g1.json occult env
gen g2o.json occult $mpi -np 2
gen g2s.json standard $mpi -np 2
grep -q '"generated_tokens":48' g1.json || fail "4 prompts x 12 tokens: $(cat g1.json)"
extract() { sed 's/.*"generations":\(\[.*\]\),"overlap".*/\1/' "$1"; }
[ "$(extract g1.json)" = "$(extract g2o.json)" ] || fail "1-rank and 2-rank text differ: $(extract g1.json) vs $(extract g2o.json)"
[ "$(extract g1.json)" = "$(extract g2s.json)" ] || fail "standard and occult text differ"
# The GEMM library changes only the order of F32 sums: the same greedy text on OpenBLAS. BF16
# compute rounds every activation, so only its token count is checked.
"$occult" generate --checkpoint ckpt --prompt "ROMEO:" --prompt-file prompts.txt --max-new-tokens 12 --temperature 0 \
  --json --gemm blas > gb.json 2> err.txt || fail "generate --gemm blas: $(cat err.txt)"
[ "$(extract g1.json)" = "$(extract gb.json)" ] || fail "oneDNN and OpenBLAS text differ"
if grep -q avx512_bf16 /proc/cpuinfo; then
  $mpi -np 2 "$occult" generate --checkpoint ckpt --prompt "ROMEO:" --prompt-file prompts.txt --max-new-tokens 12 \
    --temperature 0 --json --compute bf16 > g16.json 2> err.txt || fail "generate --compute bf16: $(cat err.txt)"
  grep -q '"generated_tokens":48' g16.json || fail "--compute bf16, 4 prompts x 12 tokens: $(cat g16.json)"
fi
# Sampling is seeded: two runs agree; streaming prints the prompt then the continuation.
$mpi -np 2 "$occult" generate --checkpoint ckpt --prompt "ROMEO:" --max-new-tokens 16 --temperature 0.9 \
  --top-p 0.9 --seed 3 > s1.txt 2> sum.txt || fail "sampled generate: $(cat sum.txt)"
"$occult" generate --checkpoint ckpt --prompt "ROMEO:" --max-new-tokens 16 --temperature 0.9 --top-p 0.9 \
  --seed 3 > s2.txt 2> /dev/null || fail "sampled generate at 1 rank"
cmp s1.txt s2.txt || fail "sampled text differs between 1 and 2 ranks"
head -c 6 s1.txt | grep -q "ROMEO:" || fail "stream does not start with the prompt"
grep -q "decode (ms/step)" sum.txt || fail "no summary table on stderr: $(cat sum.txt)"

# profile -> place -> evaluate -> prune accept the trace.
$mpi -np 2 "$occult" profile --checkpoint ckpt --data "$corpus" --tokens 1000 --seq-len 64 --out t.safetensors \
  --json > p.json 2> err.txt || fail "profile: $(cat err.txt)"
grep -q '"tokens":1000' p.json || fail "profile tokens: $(cat p.json)"
grep -q '"sequences":16' p.json || fail "profile sequences (15 x 64 + 40): $(cat p.json)"
"$occult" trace stats --traces t.safetensors --json > stats.json 2> /dev/null || fail "trace stats rejects the profile"
"$occult" place --traces t.safetensors --devices 2 --strategy greedy-fps --out place.json > /dev/null 2> err.txt \
  || fail "place: $(cat err.txt)"
"$occult" evaluate --traces t.safetensors --placement place.json > /dev/null 2> err.txt || fail "evaluate: $(cat err.txt)"
"$occult" prune --traces t.safetensors --placement place.json --max-devices 1 > /dev/null 2> err.txt \
  || fail "prune: $(cat err.txt)"
$mpi -np 2 "$occult" generate --checkpoint ckpt --prompt "ROMEO:" --max-new-tokens 8 --temperature 0 \
  --placement place.json --prune-devices 1 > /dev/null 2> err.txt || fail "generate with the placement: $(cat err.txt)"

# bench infer: exactly the keys, one variant per dispatch plus the pruned ones.
$mpi -np 2 "$occult" bench infer --config "$src/configs/tiny.json" --batch 4 --prompt-tokens 16 --decode-steps 3 \
  --repeats 2 --prune-devices 1 --json > b.json 2> err.txt || fail "bench infer: $(cat err.txt)"
for key in name dispatch prune_devices prefill_ms decode_ms_per_step tokens_per_s bytes_prefill \
  bytes_per_decode_step prefill_speedup decode_speedup; do
  grep -q "\"$key\":" b.json || fail "bench infer --json lacks $key: $(cat b.json)"
done
grep -q '"name":"occult+prune1"' b.json || fail "pruned variant missing: $(cat b.json)"
# With trained weights, text prompts and the profiled placement: occult moves fewer bytes.
$mpi -np 2 "$occult" bench infer --checkpoint ckpt --placement place.json --data "$corpus" --batch 4 \
  --prompt-tokens 32 --decode-steps 2 --repeats 1 --warmup 0 --dispatch occult --json > bc.json 2> err.txt \
  || fail "bench infer --checkpoint --data: $(cat err.txt)"
grep -q '"name":"occult"' bc.json || fail "bench infer --dispatch occult: $(cat bc.json)"

# Bad input: one error line from rank 0, exit status 1, no hang (timeout 60 s each).
expect_error() {
  pattern=$1
  shift
  if timeout 60 "$@" > out.txt 2> err.txt; then fail "accepted: $*"; fi
  [ "$(grep -c 'occult: error:' err.txt)" = "1" ] || fail "expected one error line for $*: $(cat err.txt)"
  grep -q -- "$pattern" err.txt || fail "error for $* lacks '$pattern': $(cat err.txt)"
}
long=$(head -c 80 "$corpus" | tr '\n' ' ')
expect_error "--compute: unknown compute precision 'fp8'" "$occult" generate --checkpoint ckpt --prompt "A" \
  --max-new-tokens 2 --compute fp8
expect_error "--gemm: unknown GEMM backend 'mkl'" "$occult" generate --checkpoint ckpt --prompt "A" \
  --max-new-tokens 2 --gemm mkl
expect_error "context" $mpi -np 2 "$occult" generate --checkpoint ckpt --prompt "$long" --max-new-tokens 4
# Without its manifest (which would refuse the edited config.json first), the directory loads like a
# Hugging Face one, so the weights' shapes are what disagree.
cp -r ckpt other && sed -i 's/"hidden_size": 32/"hidden_size": 48/' other/config.json && rm other/occult_manifest.json
expect_error "model.embed_tokens.weight" $mpi -np 2 "$occult" generate --checkpoint other --prompt "A" --max-new-tokens 2
expect_error "another model config" $mpi -np 2 "$occult" generate --checkpoint ckpt --config "$src/bench/infer/model.json" \
  --prompt "A" --max-new-tokens 2
"$occult" place --traces "$src/data/traces/dsv2lite-esft-law.safetensors" --devices 2 --strategy contiguous \
  --out big.json > /dev/null 2>&1 || fail "place on the shipped trace"
expect_error "experts" $mpi -np 2 "$occult" generate --checkpoint ckpt --placement big.json --prompt "A" --max-new-tokens 2
expect_error "2 devices, but the run has 1 ranks" "$occult" profile --checkpoint ckpt --data "$corpus" --tokens 100 \
  --placement place.json --out x.safetensors
expect_error "above the limit of 1.0 MiB (--kv-memory-gib 0.001)" $mpi -np 2 "$occult" bench infer --config "$src/configs/tiny.json" --batch 4000 --prompt-tokens 60 \
  --decode-steps 4 --kv-memory-gib 0.001
echo "infer CLI OK"
