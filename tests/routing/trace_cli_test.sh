#!/bin/sh
# End-to-end check of `occult trace synth | stats | convert` as a user runs them.
# Usage: trace_cli_test.sh OCCULT_BINARY SCRATCH_DIR
set -eu
occult=$1
dir=$2
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

# synth is deterministic: the same seed gives the same bytes.
"$occult" trace synth --experts 16 --top-k 3 --layers 2 --tokens 500 --groups 4 --affinity 0.9 \
  --hot-experts 2 --seq-len 50 --seed 11 --out a.safetensors > synth.txt 2> /dev/null
"$occult" trace synth --experts 16 --top-k 3 --layers 2 --tokens 500 --groups 4 --affinity 0.9 \
  --hot-experts 2 --seq-len 50 --seed 11 --out b.safetensors > /dev/null 2>&1
cmp a.safetensors b.safetensors || fail "same seed gave different files"
grep -q "wrote a.safetensors" synth.txt || fail "synth summary line missing"

# stats: the table and the JSON agree with the file.
"$occult" trace stats --traces a.safetensors --top 2 > stats.txt 2> /dev/null
grep -q "E=16 k=3 layers=2 tokens=500" stats.txt || fail "stats header: $(cat stats.txt)"
"$occult" trace stats --traces a.safetensors --json > a.json 2> /dev/null
grep -q '"num_layers":2' a.json || fail "stats --json num_layers"
grep -q '"num_tokens":500' a.json || fail "stats --json num_tokens"

# convert to other dtypes: routing is unchanged, so the statistics are identical.
"$occult" trace convert --in a.safetensors --out c.safetensors --ids i32 --weights bf16 --json > convert.json 2> /dev/null
grep -q '"to":"I32"' convert.json || fail "convert ids dtype: $(cat convert.json)"
grep -q '"to":"BF16"' convert.json || fail "convert weights dtype: $(cat convert.json)"
"$occult" trace stats --traces c.safetensors --json > c.json 2> /dev/null
sed 's/"file":"[^"]*"//' a.json > a.cmp
sed 's/"file":"[^"]*"//' c.json > c.cmp
cmp a.cmp c.cmp || fail "converted trace has different statistics"

# Bad input: a clear error naming the culprit, exit status 1, no crash.
if "$occult" trace stats --traces missing.safetensors > /dev/null 2> err.txt; then fail "missing file accepted"; fi
grep -q "missing.safetensors" err.txt || fail "error does not name the file: $(cat err.txt)"
if "$occult" trace synth --experts 16 --top-k 3 --layers 1 --tokens 10 --groups 3 --out x.safetensors > /dev/null 2> err.txt; then
  fail "--groups 3 with 16 experts accepted"
fi
grep -q -- "--groups is 3" err.txt || fail "error does not name --groups: $(cat err.txt)"
if "$occult" trace convert --in a.safetensors --out a.safetensors > /dev/null 2> err.txt; then fail "in-place convert accepted"; fi
head -c 100 a.safetensors > cut.safetensors
if "$occult" trace stats --traces cut.safetensors > /dev/null 2> err.txt; then fail "truncated file accepted"; fi
grep -q "cut.safetensors" err.txt || fail "truncation error does not name the file: $(cat err.txt)"
echo "trace CLI: all checks passed"
