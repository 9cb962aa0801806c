#!/bin/sh
# Parity of `occult logits` with the double-precision reference twin for one architecture: tiny
# random Hugging Face model directories (bf16 sharded, f32 single file with the alternative
# features and the other embedding tying, f16 single file), at 1 to 4 ranks, with both
# dispatchers and with a non-contiguous round-robin placement.
# Usage: hf_logits_test.sh OCCULT_BINARY HF_FIXTURE_BINARY ARCH [MPIEXEC]
# Exits 77 (ctest: skipped) when the occult binary has no `logits` command.
set -eu
occult=$1
fixture=$2
arch=$3
mpi="${4:-mpirun} --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
export OPENBLAS_NUM_THREADS=1
tol=1e-4

# CLI11 answers --help with the top-level help (exit 0) even for an unknown subcommand, so the
# command's own help text is what tells whether it exists.
if ! "$occult" logits --help 2>&1 | grep -q -e '--input-ids'; then
  echo "SKIP: $occult has no 'logits' command"
  exit 77
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/hf_logits_${arch}.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL [$arch]: $*" >&2; exit 1; }

# setup NAME WRITE_ARGS...: writes model NAME and its reference logits on ids.NAME. A seed whose
# router has a near-tie on these ids (reference exit 3) would make the comparison flaky, so the
# next seed is tried.
setup() {
  name=$1
  shift
  seed=1
  while :; do
    rm -rf "$dir/$name"
    "$fixture" write --arch "$arch" --out "$dir/$name" --seed "$seed" "$@" \
      || fail "hf_fixture write $name $*"
    status=0
    "$fixture" reference --model "$dir/$name" --input-ids "$dir/ids.$name" \
      --out "$dir/ref.$name" > "$dir/ref.$name.txt" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
      echo "model $name: hf_fixture write --arch $arch --seed $seed $*"
      return 0
    fi
    [ "$status" -eq 3 ] && [ "$seed" -lt 20 ] || fail "reference $name: $(cat "$dir/ref.$name.txt")"
    seed=$((seed + 1))
  done
}

# check NAME RANKS DISPATCH [PLACE]: runs occult logits and compares with the reference. The
# weights are held as --weights $weights says (auto: BF16 for the bf16 directory, else F32).
weights=auto
check() {
  name=$1 np=$2 dispatch=$3 place=${4:-}
  label="$name np=$np dispatch=$dispatch weights=$weights${place:+ placement=round-robin}"
  out="$dir/out.$name.$np.$dispatch.$weights${place:+.placed}"
  set -- --model "$dir/$name" --input-ids "$dir/ids.$name" --out "$out" --dispatch "$dispatch" \
    --weights "$weights"
  if [ -n "$place" ]; then
    "$fixture" placement --model "$dir/$name" --devices "$np" --out "$dir/place.$name.$np.json" \
      || fail "hf_fixture placement $label"
    set -- "$@" --placement "$dir/place.$name.$np.json"
  fi
  $mpi -np "$np" "$occult" logits "$@" > "$out.txt" 2>&1 || fail "occult logits $label: $(cat "$out.txt")"
  "$fixture" compare --expected "$dir/ref.$name" --actual "$out" --tol "$tol" > "$out.cmp" 2>&1 \
    || fail "$label: $(cat "$out.cmp")"
  echo "ok   $label: $(cat "$out.cmp")"
}

"$fixture" input-ids --batch 3 --seq 7 --vocab 96 --seed 11 --dtype i64 --out "$dir/ids.bf16_sharded"
"$fixture" input-ids --batch 3 --seq 7 --vocab 96 --seed 12 --dtype i32 --out "$dir/ids.f32_alt"
"$fixture" input-ids --batch 3 --seq 7 --vocab 96 --seed 13 --dtype i64 --out "$dir/ids.f16"

# The variant's default embedding tying for bf16/f16, the other one for the f32 directory.
case $arch in
  qwen3_moe | mixtral) alt_tied=0 ;;
  *) alt_tied=1 ;;
esac
setup bf16_sharded --dtype bf16 --shards 3
setup f32_alt --dtype f32 --variant alt --tied "$alt_tied"
setup f16 --dtype f16 --shards 2

for np in 1 2 3 4; do
  check bf16_sharded "$np" standard
  check bf16_sharded "$np" occult
done
for np in 2 3 4; do
  check bf16_sharded "$np" occult place
done
check bf16_sharded 3 standard place
check f32_alt 1 standard
check f32_alt 3 occult place
check f32_alt 4 standard
check f16 2 occult place
# The BF16 directory held in F32 (the checks above hold it in BF16).
weights=f32
check bf16_sharded 2 occult
check bf16_sharded 3 standard place
echo "PASS [$arch]"
