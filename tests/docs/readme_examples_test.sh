#!/usr/bin/env bash
# Runs README.md's examples as written, in document order, from a scratch folder that holds
# what a clean clone has (configs/, data/, bench/, scripts/) and the build as build/.
#
# Which fenced blocks run (the convention README.md states in its first comment):
#   ```sh        run by this test (each block in a fresh `bash -e`, in the same folder, so later
#                blocks use what earlier ones wrote)
#   ```sh slow   run only with --slow (minutes of work, or root for a network namespace)
#   ```sh repo   the repository's own make targets (they build and run this test): never run
#   ```text      output or layout, never run
# mpirun runs as a root user would run it: OMPI_ALLOW_RUN_AS_ROOT* and oversubscription are set
# in the environment, as README.md says to, with OPENBLAS_NUM_THREADS=1.
#
# Usage: readme_examples_test.sh SOURCE_DIR BUILD_DIR SCRATCH_DIR [--slow]
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
dir=$3
slow=${4:-}
rm -rf "$dir" && mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
ln -s "$build" "$dir/build"
for d in configs data bench scripts; do ln -s "$src/$d" "$dir/$d"; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_odls_base_sigkill_timeout=0
export OPENBLAS_NUM_THREADS=1 OCCULT_CACHE_DIR="$dir/.cache"

# One file per runnable block: blocks/NNN-LINE.sh (LINE: the README line of its first command).
mkdir -p "$dir/.blocks"
awk -v out="$dir/.blocks" -v slow="$slow" '
  /^```/ {
    if (state != "") { state = ""; next }  # a closing fence
    info = substr($0, 4)
    if (info == "sh" || (info == "sh slow" && slow == "--slow")) {
      state = "run"; n++; file = sprintf("%s/%03d-%d.sh", out, n, NR + 1); printf "" > file
    } else {
      state = "skip"
    }
    next
  }
  state == "run" { print >> file }
' "$src/README.md"

count=$(ls "$dir/.blocks" | wc -l)
[ "$count" -gt 0 ] || { echo "FAIL: README.md has no \`\`\`sh example block" >&2; exit 1; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
total_start=$(ms)
cd "$dir"
for block in "$dir"/.blocks/*.sh; do
  line=$(basename "$block" .sh | cut -d- -f2)
  start=$(ms)
  if ! bash -e -o pipefail "$block" > "$block.log" 2>&1; then
    echo "FAIL: the README example at README.md:$line does not run as written:" >&2
    sed 's/^/    /' "$block" >&2
    echo "  its output (last 30 lines):" >&2
    tail -n 30 "$block.log" | sed 's/^/    /' >&2
    exit 1
  fi
  elapsed=$(( $(ms) - start ))
  printf 'README.md:%-4s %4d.%01d s\n' "$line" $((elapsed / 1000)) $((elapsed % 1000 / 100))
done
elapsed=$(( $(ms) - total_start ))
printf 'readme examples: %d blocks ran as written in %d.%01d s\n' "$count" $((elapsed / 1000)) $((elapsed % 1000 / 100))
