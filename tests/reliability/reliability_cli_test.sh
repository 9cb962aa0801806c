#!/bin/sh
# The reliability suite of the `occult` command at NP ranks. Every failure case asserts a non-zero
# exit within a time limit (a hang fails the case), exactly one "occult: error:" line naming the
# problem, and, for saves, that no partial output is taken as a good checkpoint:
#   faults  - an exception of another type than occult's (std::bad_alloc, std::stoi's, a runtime
#             error) raised on one rank outside any error agreement; a rank killed, a rank stuck
#             and a rank stopped (the collective watchdog, --collective-timeout); a checkpoint whose
#             lm_head.weight holds a NaN (generate and eval) or an overflowing value (eval).
#   saves   - a save killed after each file it writes and before its final rename leaves the
#             previous checkpoint whole; torn, mixed and manifest-less checkpoints are refused
#             naming the file; a leftover DIR.partial is ignored and cleaned.
#   flags   - numeric flags out of range, unwritable or misplaced --save / --log / --config /
#             --data, and --resume with other --steps, data or --lr.
#   diverge - a run whose learning rate makes it diverge stops naming the step and the lr.
# SUITE "all" runs every group, "faults" only the first, "checkpoints" faults and saves.
# Usage: reliability_cli_test.sh OCCULT POKE_TENSOR MPIEXEC SOURCE_DIR SCRATCH_DIR NP SUITE
set -eu
occult=$1
poke=$2
mpi="$3 --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
src=$4
dir=$5
np=$6
suite=$7
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
export OPENBLAS_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }
last=$((np - 1))
limit=60   # seconds any failing run may take; the slowest case takes about 5 s on a busy machine
head -c 30000 "$src/data/corpus/tinyshakespeare.txt" > corpus.txt
head -c 4000 "$src/data/corpus/gsm8k-test.txt" > other.txt
small="--steps 8 --batch 4 --seq-len 32 --no-progress"

# run LABEL [ENV=VALUE...] -- OCCULT ARGS...: runs occult at NP ranks (mpirun -x for each ENV)
# within the time limit, output in LABEL.txt, status in $status.
run() {
  label=$1
  shift
  xs=""
  while [ "$1" != "--" ]; do
    xs="$xs -x $1"
    shift
  done
  shift
  status=0
  # shellcheck disable=SC2086
  timeout $limit $mpi $xs -np "$np" "$occult" "$@" > "$label.txt" 2>&1 || status=$?
  [ "$status" -ne 124 ] && [ "$status" -ne 137 ] || fail "$label: no exit within $limit s (a hang): $(tail -5 "$label.txt")"
}
# expect_error LABEL NEEDLE... (after run): non-zero exit, one error line, every NEEDLE in it.
expect_error() {
  label=$1
  shift
  [ "$status" -ne 0 ] || fail "$label: exited 0: $(cat "$label.txt")"
  count=$(grep -c '^occult: error:' "$label.txt" || true)
  [ "$count" -eq 1 ] || fail "$label: $count error lines, not 1: $(cat "$label.txt")"
  line=$(grep '^occult: error:' "$label.txt")
  for needle in "$@"; do
    case $line in
      *"$needle"*) ;;
      *) fail "$label: the error does not name '$needle': $line" ;;
    esac
  done
  echo "ok   $label (exit $status): $line"
}
expect_ok() {
  [ "$status" -eq 0 ] || fail "$1: failed: $(cat "$1.txt")"
  echo "ok   $1"
}
manifest_step() { sed -n 's/^  "step": \([0-9]*\),*$/\1/p' "$1/occult_manifest.json"; }

# A 4-step checkpoint (and a 2-step one of the same run) to corrupt.
run base -- train --config "$src/configs/tiny.json" --data corpus.txt $small --stop-at 4 --save-every 2 --save base
expect_ok base
[ "$(manifest_step base)" = 4 ] || fail "base: the manifest is not at step 4: $(cat base/occult_manifest.json)"
run base2 -- train --config "$src/configs/tiny.json" --data corpus.txt $small --stop-at 2 --save base2
expect_ok base2

# --- faults ---------------------------------------------------------------------------------
for kind in bad_alloc stoi runtime error; do
  run "fault_$kind" "OCCULT_TEST_FAULT=$last:$kind" -- generate --model base --prompt Hi --max-new-tokens 2
  case $kind in
    bad_alloc) needle="out of memory" ;;
    stoi) needle="invalid value: stoi" ;;
    runtime) needle="injected test fault" ;;
    error) needle="injected test fault" ;;
  esac
  expect_error "fault_$kind" "$needle"
done
# The hang of a NaN in lm_head.weight: an occult directory without its manifest loads like a
# Hugging Face one, so the NaN itself must be refused, naming the tensor.
cp -r base nan && rm nan/occult_manifest.json && "$poke" nan/model.safetensors lm_head.weight nan
run nan_generate -- generate --model nan --prompt Hi --max-new-tokens 2
expect_error nan_generate "nan/model.safetensors" '"lm_head.weight"' "non-finite"
run nan_eval -- eval --model nan --data other.txt --seq-len 32 --json
expect_error nan_eval '"lm_head.weight"' "non-finite"
grep -q null nan_eval.txt && fail "nan_eval printed null: $(cat nan_eval.txt)"
# A finite weight large enough to overflow the logits: eval must fail, not print a null loss.
cp -r nan huge && cp base/model.safetensors huge/ && "$poke" huge/model.safetensors lm_head.weight 3e38 \
  && "$poke" huge/model.safetensors model.norm.weight 3e38
run huge_eval -- eval --model huge --data other.txt --seq-len 32 --json
expect_error huge_eval "non-finite"
grep -q null huge_eval.txt && fail "huge_eval printed null: $(cat huge_eval.txt)"
# With its manifest, the same NaN is a file that does not match its checksum.
cp -r base poked && "$poke" poked/model.safetensors lm_head.weight nan
run poked_generate -- generate --model poked --prompt Hi --max-new-tokens 2
expect_error poked_generate "checksum of model.safetensors"
# A rank killed mid-run (SIGKILL, as the kernel's out-of-memory killer does): mpirun must end the
# job, non-zero, within the time limit.
if [ "$np" -gt 1 ]; then
  rm -f pid.*
  start=$(date +%s)
  status=0
  # shellcheck disable=SC2086
  timeout $limit $mpi -np "$np" sh -c 'echo $$ > pid.$OMPI_COMM_WORLD_RANK; exec "$0" "$@"' "$occult" train \
    --config "$src/configs/tiny.json" --data corpus.txt --steps 100000 --batch 4 --seq-len 32 --no-progress \
    > killed.txt 2>&1 &
  job=$!
  waited=0
  while [ ! -s "pid.$last" ] && [ $waited -lt 20 ]; do sleep 1; waited=$((waited + 1)); done
  [ -s "pid.$last" ] || fail "killed_rank: rank $last did not start"
  sleep 2
  kill -9 "$(cat "pid.$last")"
  wait $job || status=$?
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || fail "killed_rank: status $status: $(tail -5 killed.txt)"
  echo "ok   killed_rank (exit $status after $(( $(date +%s) - start )) s)"
  # A rank that stops answering without exiting (stuck before its first collective): the
  # watchdog of a waiting rank ends the job, naming itself, the operation and the activity.
  run hang "OCCULT_TEST_FAULT=$last:hang" -- generate --collective-timeout 2 --model base --prompt Hi \
    --max-new-tokens 2
  expect_error hang "rank 0 waited 2 s in MPI_" "during start-up" "stopped answering" "--collective-timeout"
  # A rank stopped mid-training (SIGSTOP): the same, within the timeout and a poll.
  rm -f pid.*
  start=$(date +%s)
  status=0
  # shellcheck disable=SC2086
  timeout $limit $mpi -np "$np" sh -c 'echo $$ > pid.$OMPI_COMM_WORLD_RANK; exec "$0" "$@"' "$occult" train \
    --collective-timeout 3 --config "$src/configs/tiny.json" --data corpus.txt --steps 100000 --batch 4 \
    --seq-len 32 --no-progress > stopped.txt 2>&1 &
  job=$!
  waited=0
  while [ ! -s "pid.$last" ] && [ $waited -lt 20 ]; do sleep 1; waited=$((waited + 1)); done
  [ -s "pid.$last" ] || fail "stopped_rank: rank $last did not start"
  sleep 3
  kill -STOP "$(cat "pid.$last")"
  wait $job || status=$?
  [ "$status" -ne 124 ] || { kill -9 "$(cat "pid.$last")"; fail "stopped_rank: no exit within $limit s"; }
  expect_error stopped "rank 0 waited 3 s in MPI_" "during " "stopped answering"
  echo "ok   stopped_rank (exit $status after $(( $(date +%s) - start )) s)"
fi
[ "$suite" != faults ] || { echo PASS; exit 0; }

# --- saves ----------------------------------------------------------------------------------
resume="train --data corpus.txt $small"
for point in model.safetensors optimizer.safetensors config.json trainer_state.json occult_manifest.json rename; do
  rm -rf ck ck.partial && cp -r base ck
  run "kill_$point" "OCCULT_TEST_SAVE_FAULT=$point" -- $resume --resume ck --stop-at 6 --save ck
  [ "$status" -ne 0 ] || fail "kill_$point: the killed save exited 0"
  [ -d ck.partial ] || fail "kill_$point: no ck.partial left behind"
  [ "$(manifest_step ck)" = 4 ] || fail "kill_$point: ck is no longer the step-4 checkpoint"
  run "after_kill_$point" -- $resume --resume ck --stop-at 5 --json
  expect_ok "after_kill_$point"
  echo "ok   kill_$point: ck still holds step 4 and resumes"
done
# The next save cleans the leftover partial directory.
run clean_partial -- $resume --resume ck --stop-at 5 --save ck
expect_ok clean_partial
[ ! -e ck.partial ] || fail "clean_partial: ck.partial is still there"
[ "$(manifest_step ck)" = 5 ] || fail "clean_partial: ck is not at step 5"
# A first save killed: there is no checkpoint, and resuming says what the partial directory is.
rm -rf fresh fresh.partial
run kill_first "OCCULT_TEST_SAVE_FAULT=config.json" -- train --config "$src/configs/tiny.json" --data corpus.txt \
  $small --stop-at 2 --save fresh
[ "$status" -ne 0 ] && [ ! -e fresh ] && [ -d fresh.partial ] || fail "kill_first: $(ls)"
run resume_partial -- $resume --resume fresh
expect_error resume_partial "fresh.partial" "interrupted save"
# A full disk during a save (a 1400 kB tmpfs holding the 916 kB checkpoint: the new weights fit,
# the optimizer moments do not): the error names the file, the previous checkpoint stays whole.
# Needs a root that may mount; else the kills above stand for it.
mkdir -p full
if mount -t tmpfs -o size=1400k tmpfs full 2> /dev/null; then
  trap 'umount "$dir/full" 2> /dev/null || true' EXIT
  cp -r base full/ck
  run disk_full -- $resume --resume full/ck --stop-at 6 --save full/ck
  expect_error disk_full "full/ck.partial/optimizer.safetensors" "No space left on device"
  [ "$(manifest_step full/ck)" = 4 ] || fail "disk_full: full/ck is no longer the step-4 checkpoint"
  run after_disk_full -- $resume --resume full/ck --stop-at 5 --json
  expect_ok after_disk_full
  umount full
  trap - EXIT
else
  echo "skip disk_full: cannot mount a tmpfs here"
fi
# Torn, mixed and unverifiable checkpoints are refused naming the file.
cp -r base torn && head -c 1000 base/optimizer.safetensors > torn/optimizer.safetensors
run torn -- $resume --resume torn
expect_error torn "torn" "optimizer.safetensors has 1000 bytes"
cp -r base mixed && cp base2/model.safetensors mixed/
run mixed -- $resume --resume mixed
expect_error mixed "mixed" "model.safetensors"
cp -r base missing && rm missing/trainer_state.json
run missing -- $resume --resume missing
expect_error missing "trainer_state.json is missing"
cp -r base unverified && rm unverified/occult_manifest.json
run unverified -- $resume --resume unverified
expect_error unverified "has no occult_manifest.json"
run init_unverified -- train --data corpus.txt $small --stop-at 1 --init unverified
expect_ok init_unverified

[ "$suite" = all ] || { echo PASS; exit 0; }

# --- flags ----------------------------------------------------------------------------------
new="train --config $src/configs/tiny.json --data corpus.txt $small"
for case in "--min-lr-ratio -0.5" "--weight-decay -1" "--warmup -1" "--grad-clip -1" "--eval-every -1" \
            "--stop-at 0" "--lr 0" "--save-every -2" "--eval-sequences 0" "--lr nan" "--compute fp8" \
            "--gemm mkl"; do
  flag=${case%% *}
  label="flag${flag}"
  # shellcheck disable=SC2086
  run "$label" -- $new $case
  expect_error "$label" "$flag"
done
# A step too large for the memory left after the model: refused before the first step, naming
# the parts and the flags that shrink them (the model alone fits the 10 MiB budget).
run step_memory -- train --memory-limit 0.01 --config "$src/configs/tiny.json" --data corpus.txt \
  --steps 2 --batch 256 --seq-len 64 --no-progress
expect_error step_memory "a training step of" "activations" "MoE routing and exchange buffers" "lower --batch"
grep -q "^step " step_memory.txt && fail "step_memory: a step ran before the refusal"
run eval_batch -- eval --model base --data other.txt --batch 0
expect_error eval_batch "--batch"
run generate_top_p -- generate --model base --prompt Hi --top-p 0
expect_error generate_top_p "--top-p"
run log_full -- $new --stop-at 1 --log /dev/full
expect_error log_full "--log /dev/full"
run log_dir -- $new --log base
expect_error log_dir "--log base is a directory"
touch afile
run save_file -- $new --save afile
expect_error save_file "--save afile is a file"
run save_unwritable -- $new --save afile/sub/ck
expect_error save_unwritable "--save afile/sub/ck" "cannot create the folder afile/sub"
run save_foreign -- $new --save "$src/configs"
expect_error save_foreign "is a non-empty directory that is not an occult checkpoint"
run config_dir -- train --config base --data corpus.txt $small
expect_error config_dir "--config base is a directory"
run data_dir -- train --config "$src/configs/tiny.json" --data base $small
expect_error data_dir "--data base is a directory"
run profile_out -- profile --model base --data other.txt --out base
expect_error profile_out "--out base is a directory"
run resume_steps -- train --data corpus.txt --steps 9 --batch 4 --seq-len 32 --no-progress --resume base
expect_error resume_steps "--steps 9 differs" "--allow-changed-schedule"
run resume_data -- train --data other.txt $small --resume base
expect_error resume_data "other.txt is not the data"
run resume_lr -- $resume --lr 0.002 --resume base
expect_error resume_lr "--lr 0.002 differs"
run resume_allowed -- train --data corpus.txt --steps 9 --batch 4 --seq-len 32 --no-progress --stop-at 5 \
  --resume base --allow-changed-schedule
expect_ok resume_allowed

# --- diverge --------------------------------------------------------------------------------
run diverge -- $new --lr 1e30 --grad-clip 0 --warmup 0
expect_error diverge "step " "(lr "
echo PASS
