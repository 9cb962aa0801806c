#!/bin/sh
# Errors of `occult logits` at 2 ranks are reported once, by one rank, and name what is wrong:
# on a sharded model directory missing a shard (the message names the shard file), one whose
# config.json has a misspelt key (it names config.json and the key), and a model above the
# per-rank memory limit OCCULT_MEMORY_LIMIT_GIB (it names the bytes needed and available). In each
# case the run exits non-zero and "occult: error:" is printed exactly once, not once per rank. The
# same holds for DeepSeek-V2/V3 keys occult does not compute (YaRN rope_scaling, another router,
# groups that do not divide the experts, attention biases, a missing MLA key), and fine-tuning a
# latent-attention model is refused with one message.
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

# DeepSeek-V2/V3 keys occult does not compute: each a clear error naming the key. corrupt NAME ARCH
# SED_EXPR writes a copy of a valid ARCH directory with its config.json edited by SED_EXPR.
"$fixture" write --arch deepseek_v3 --out "$dir/v3" --seed 5 || fail "hf_fixture write deepseek_v3"
"$fixture" write --arch deepseek_v2 --out "$dir/v2" --seed 5 || fail "hf_fixture write deepseek_v2"
$mpi -np 2 "$occult" logits --model "$dir/v3" --input-ids "$dir/ids" --out "$dir/v3.logits" \
  > "$dir/v3.txt" 2>&1 || fail "the valid deepseek_v3 directory does not run: $(cat "$dir/v3.txt")"
corrupt() {
  name=$1 arch=$2 expr=$3
  cp -r "$dir/$arch" "$dir/$name"
  sed "$expr" "$dir/$arch/config.json" > "$dir/$name/config.json"
  ! cmp -s "$dir/$arch/config.json" "$dir/$name/config.json" || fail "$name: sed '$expr' changed nothing"
}
corrupt longrope v3 's/"rope_type": "yarn"/"rope_type": "longrope"/'
expect_error longrope "$dir/longrope" '"rope_scaling"' '"longrope"' "is not supported" "yarn"
corrupt v3_greedy v3 's/"noaux_tc"/"greedy"/'
expect_error v3_greedy "$dir/v3_greedy" '"topk_method"' '"greedy"' "deepseek_v3"
corrupt v3_softmax v3 's/"sigmoid"/"softmax"/'
expect_error v3_softmax "$dir/v3_softmax" '"scoring_func"' "sigmoid"
corrupt v3_groups v3 's/"n_group": 4/"n_group": 3/'
expect_error v3_groups "$dir/v3_groups" '"n_group" = 3' "divide n_routed_experts = 8"
corrupt v3_unnormalised v3 's/"norm_topk_prob": true/"norm_topk_prob": false/'
expect_error v3_unnormalised "$dir/v3_unnormalised" '"norm_topk_prob"' "deepseek_v3"
corrupt v2_noaux v2 's/"group_limited_greedy"/"noaux_tc"/'
expect_error v2_noaux "$dir/v2_noaux" '"topk_method"' '"noaux_tc"' "deepseek_v2"
corrupt v2_bias v2 's/"attention_bias": false/"attention_bias": true/'
expect_error v2_bias "$dir/v2_bias" '"attention_bias"' "MLA"
corrupt v2_no_latent v2 '/"kv_lora_rank"/d'
expect_error v2_no_latent "$dir/v2_no_latent" '"kv_lora_rank" is missing'

# Fine-tuning a latent-attention family runs (its backward is checked in hf_gradient_test).
"$fixture" input-ids --batch 4 --seq 64 --vocab 96 --seed 2 --dtype i64 --out "$dir/corpus" || fail "hf_fixture input-ids"
out="$dir/train_v3.txt"
$mpi -np 2 "$occult" train --init "$dir/v3" --data-ids "$dir/corpus" --steps 2 --batch 2 --seq-len 4 --no-progress \
  --save "$dir/v3_tuned" > "$out" 2>&1 || fail "train --init deepseek_v3: $(cat "$out")"
[ -f "$dir/v3_tuned/config.json" ] || fail "train --init deepseek_v3 wrote no checkpoint: $(cat "$out")"
echo "ok   train --init deepseek_v3 fine-tunes and saves"

extra="-x OCCULT_MEMORY_LIMIT_GIB=0.000001"
expect_error memory_limit "$dir/good" "the model needs" "(1073 bytes) are available per rank" \
  "OCCULT_MEMORY_LIMIT_GIB" "use more ranks or a smaller model"
echo "PASS"
