#!/usr/bin/env bash
# The main job on its embedded default (see README.md, "make demo").
set -euo pipefail
build=${1:-build}
"$build/occult" --help
