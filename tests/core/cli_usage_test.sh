#!/bin/sh
# Command-line mistakes as a user makes them: a mistyped command or flag is named with the nearest
# known one, and under mpirun the error is printed once (by rank 0) while every rank exits non-zero.
# Usage: cli_usage_test.sh OCCULT_BINARY MPIEXEC SCRATCH_DIR
set -eu
occult=$1
mpi="$2 --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1"
dir=$3
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_error FILE MESSAGE COMMAND...: COMMAND fails, and FILE (its stderr) is exactly MESSAGE.
expect_error() {
  out=$1
  message=$2
  shift 2
  if "$@" > "$out.stdout" 2> "$out"; then fail "accepted: $*"; fi
  [ "$(cat "$out")" = "$message" ] || fail "$*: expected '$message', got '$(cat "$out")'"
}

expect_error e1.txt 'occult: error: unknown command "trian"; did you mean "train"?' "$occult" trian
expect_error e2.txt 'occult: error: unknown flag --step for "occult train"; did you mean --steps?' \
  "$occult" train --step 5
expect_error e3.txt 'occult: error: unknown command "trace synthh"; did you mean "trace synth"?' \
  "$occult" trace synthh --out x.safetensors
expect_error e4.txt 'occult: error: unknown flag --devcies for "occult place"; did you mean --devices?' \
  "$occult" place --traces x --devcies 4 --out p.json
# The value of a known flag is not taken for a command or a flag.
expect_error e5.txt 'occult: error: unknown flag --max-imbalanse for "occult place"; did you mean --max-imbalance?' \
  "$occult" place --devices 4 --max-imbalanse 1.2
# The global flags, before or after the subcommand, with their values checked (a negative value is
# a value, not a flag).
if "$occult" --memory-limit -1 train > /dev/null 2> e7.txt; then fail "--memory-limit -1 accepted"; fi
grep -q '^--memory-limit: must be a positive number of GiB, got -1' e7.txt || fail "$(cat e7.txt)"
if "$occult" train --collective-timeout -5 > /dev/null 2> e8.txt; then fail "--collective-timeout -5 accepted"; fi
grep -q '^--collective-timeout: must be 0 (wait forever) or a positive number of seconds, got -5' e8.txt ||
  fail "$(cat e8.txt)"
# Nothing close: the known commands are listed instead of a guess.
if "$occult" zzzzzzzz > /dev/null 2> e6.txt; then fail "zzzzzzzz accepted"; fi
grep -q '^occult: error: unknown command "zzzzzzzz"; the commands are: .*train' e6.txt || fail "$(cat e6.txt)"

# Under mpirun: one message for the job, not one per rank, and a non-zero exit.
if $mpi -np 3 "$occult" train --step 5 > m1.txt 2>&1; then fail "mpirun train --step 5 succeeded"; fi
[ "$(grep -c 'unknown flag --step for "occult train"; did you mean --steps?' m1.txt)" = 1 ] ||
  fail "mpirun: the error must be printed once: $(cat m1.txt)"
# An error CLI11 words itself (a value of the wrong type) is printed once too.
if $mpi -np 3 "$occult" train --steps many > m2.txt 2>&1; then fail "mpirun train --steps many succeeded"; fi
[ "$(grep -c 'many' m2.txt)" = 1 ] || fail "mpirun: the conversion error must be printed once: $(cat m2.txt)"
echo "cli usage: all checks passed"
