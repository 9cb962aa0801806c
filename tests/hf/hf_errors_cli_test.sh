#!/bin/sh
# Errors of `occult logits` at 2 ranks are reported once, by one rank, and name what is wrong:
# on a sharded model directory missing a shard (the message names the shard file), one whose
# config.json has a misspelt key (it names config.json and the key), and a model above the
# per-rank memory limit OCCULT_MEMORY_LIMIT_GIB (it names the bytes needed and available). In each
# case the run exits non-zero and "occult: error:" is printed exactly once, not once per rank.
# Usage: hf_errors_cli_test.sh OCCULT_BINARY HF_FIXTURE_BINARY [MPIEXEC]
set -eu
occult=$1
fixture=$2
mpi="${3:-mpirun} --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
export OPENBLAS_NUM_THREADS=1

dir=$(mktemp -d "${TMPDIR:-/tmp}/hf_errors_cli.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$fixture" write --arch qwen2_moe --out "$dir/good" --dtype bf16 --shards 3 --seed 5 || fail "hf_fixture write"
"$fixture" input-ids --batch 2 --seq 5 --vocab 96 --seed 1 --dtype i64 --out "$dir/ids" || fail "hf_fixture input-ids"

# expect_error LABEL MODEL_DIR NEEDLE...: runs occult logits at 2 ranks (with mpirun arguments
# $extra) on MODEL_DIR and checks a non-zero exit, exactly one error line, every NEEDLE in it,
# and that no logits were written.
expect_error() {
  label=$1 model=$2
  shift 2
  out="$dir/$label.txt"
  status=0
  # shellcheck disable=SC2086
  $mpi $extra -np 2 "$occult" logits --model "$model" --input-ids "$dir/ids" --out "$dir/$label.logits" \
    > "$out" 2>&1 || status=$?
  [ "$status" -ne 0 ] || fail "$label: occult logits exited 0: $(cat "$out")"
  count=$(grep -c '^occult: error:' "$out" || true)
  [ "$count" -eq 1 ] || fail "$label: the error was printed $count times, not once: $(cat "$out")"
  line=$(grep '^occult: error:' "$out")
  for needle in "$@"; do
    case $line in
      *"$needle"*) ;;
      *) fail "$label: the error does not name '$needle': $line" ;;
    esac
  done
  [ ! -e "$dir/$label.logits" ] || fail "$label: logits were written despite the error"
  echo "ok   $label (exit $status): $line"
}

# The valid directory runs, so the failures below are the corruptions' doing.
extra=""
$mpi -np 2 "$occult" logits --model "$dir/good" --input-ids "$dir/ids" --out "$dir/good.logits" \
  > "$dir/good.txt" 2>&1 || fail "the valid directory does not run: $(cat "$dir/good.txt")"
echo "ok   valid directory runs at 2 ranks"

cp -r "$dir/good" "$dir/missing_shard"
rm "$dir/missing_shard/model-00002-of-00003.safetensors"
expect_error missing_shard "$dir/missing_shard" "model-00002-of-00003.safetensors" \
  "$dir/missing_shard/model.safetensors.index.json" "does not exist"

cp -r "$dir/good" "$dir/bad_key"
sed 's/"rope_theta"/"rope_thetta"/' "$dir/good/config.json" > "$dir/bad_key/config.json"
grep -q '"rope_thetta"' "$dir/bad_key/config.json" || fail "could not misspell rope_theta in config.json"
expect_error bad_key "$dir/bad_key" "$dir/bad_key/config.json" '"rope_thetta"' 'did you mean "rope_theta"'

extra="-x OCCULT_MEMORY_LIMIT_GIB=0.000001"
expect_error memory_limit "$dir/good" "the model needs" "(1073 bytes) are available per rank" \
  "OCCULT_MEMORY_LIMIT_GIB" "use more ranks or a smaller model"
echo "PASS"
