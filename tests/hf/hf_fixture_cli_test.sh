#!/bin/sh
# The hf_fixture command line as the logits script uses it: every architecture writes, computes
# reference logits and places; compare accepts identical logits (exit 0), rejects different
# ones (exit 1) and mismatched shapes (exit 2), and bad flags are errors.
# Usage: hf_fixture_cli_test.sh HF_FIXTURE_BINARY
set -eu
fixture=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/hf_fixture_cli.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$fixture" input-ids --batch 3 --seq 7 --vocab 96 --seed 5 --dtype i32 --out "$dir/ids"
"$fixture" input-ids --batch 2 --seq 4 --vocab 96 --seed 5 --out "$dir/ids_small"
for arch in olmoe qwen2_moe deepseek qwen3_moe mixtral; do
  "$fixture" write --arch "$arch" --out "$dir/$arch" --dtype bf16 --shards 2 --seed 4
  [ -f "$dir/$arch/model-00002-of-00002.safetensors" ] || fail "$arch: no second shard"
  [ -f "$dir/$arch/model.safetensors.index.json" ] || fail "$arch: no shard index"
  grep -q "\"model_type\": \"$arch\"" "$dir/$arch/config.json" || fail "$arch: model_type"
  status=0
  "$fixture" reference --model "$dir/$arch" --input-ids "$dir/ids" --out "$dir/$arch.ref" \
    > "$dir/out.txt" 2>&1 || status=$?
  # Exit 3 (a router near-tie) still writes the logits; anything else is a failure.
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "$arch reference: $(cat "$dir/out.txt")"
  "$fixture" compare --expected "$dir/$arch.ref" --actual "$dir/$arch.ref" > "$dir/out.txt" \
    || fail "$arch: logits differ from themselves: $(cat "$dir/out.txt")"
  "$fixture" placement --model "$dir/$arch" --devices 3 --out "$dir/$arch.place.json"
  grep -q '"format": "occult-placement/1"' "$dir/$arch.place.json" || fail "$arch: placement format"
done
"$fixture" reference --model "$dir/olmoe" --input-ids "$dir/ids_small" --out "$dir/small.ref" > /dev/null 2>&1 || [ $? -eq 3 ]

expect_status() {  # expect_status STATUS WHAT COMMAND...
  want=$1 what=$2
  shift 2
  status=0
  "$@" > "$dir/out.txt" 2>&1 || status=$?
  [ "$status" -eq "$want" ] || fail "$what: exit $status, expected $want: $(cat "$dir/out.txt")"
}
expect_status 1 "different logits" "$fixture" compare --expected "$dir/olmoe.ref" --actual "$dir/mixtral.ref"
grep -q "exceeds tolerance" "$dir/out.txt" || fail "different logits: no clear message"
expect_status 0 "a loose tolerance" "$fixture" compare --expected "$dir/olmoe.ref" --actual "$dir/mixtral.ref" --tol 1e9
expect_status 2 "mismatched shapes" "$fixture" compare --expected "$dir/olmoe.ref" --actual "$dir/small.ref"
grep -q "shapes differ" "$dir/out.txt" || fail "mismatched shapes: no clear message"
expect_status 2 "an unknown arch" "$fixture" write --arch llama --out "$dir/llama"
expect_status 2 "too many shards" "$fixture" write --arch olmoe --shards 4 --out "$dir/many"
expect_status 2 "an unknown dtype" "$fixture" write --arch olmoe --dtype f8 --out "$dir/f8"
echo "PASS"
