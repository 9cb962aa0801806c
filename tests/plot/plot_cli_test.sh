#!/bin/sh
# `occult plot train | placement | infer` end to end on the commands' own outputs: each writes a
# PNG (the signature, and more bytes than an empty frame); bad input and a missing gnuplot are
# one clear error naming the file, the key or the package.
# Usage: plot_cli_test.sh OCCULT_BINARY SOURCE_DIR SCRATCH_DIR
set -eu
occult=$1
src=$2
dir=$3
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

# is_png FILE: starts with the 8-byte PNG signature and holds more than an empty 800-pixel frame.
is_png() {
  [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$1 is not a PNG"
  [ "$(wc -c < "$1")" -gt 8000 ] || fail "$1 is only $(wc -c < "$1") bytes"
}

# Without gnuplot (it comes with scripts/bootstrap.sh) only the error can be checked: exit 77, skipped.
if ! command -v gnuplot > /dev/null; then
  printf '{"step":1,"loss":2.0,"tokens_per_s":5}\n' > log.jsonl
  "$occult" plot train --in log.jsonl --out none.png 2> err.txt && fail "plot without gnuplot succeeded"
  grep -q "install the Debian package gnuplot-nox" err.txt || fail "without gnuplot: $(cat err.txt)"
  echo "plot cli: gnuplot is not installed; checked its error only"
  exit 77
fi

"$occult" train --config "$src/configs/tiny.json" --data "$src/data/corpus/tinyshakespeare.txt" --steps 4 \
  --batch 2 --seq-len 16 --eval-every 2 --eval-sequences 2 --log runs/log.jsonl --no-progress --token-cache "" \
  > train.txt
"$occult" plot train --in runs/log.jsonl --out img/loss.png > plot1.txt
is_png img/loss.png
grep -q "wrote img/loss.png" plot1.txt || fail "plot train: $(cat plot1.txt)"

t="$src/data/traces"
"$occult" place --traces "$t/dsv2lite-esft-intent.safetensors" --devices 4 --out hg.json > /dev/null
"$occult" place --traces "$t/dsv2lite-esft-intent.safetensors" --devices 4 --strategy contiguous --out c.json \
  > /dev/null
"$occult" evaluate --traces "$t/dsv2lite-esft-law.safetensors" --placement hg.json --json > hg-law.json
grep -q '"top_k":6' hg-law.json || fail "evaluate --json has no top_k: $(cat hg-law.json)"
"$occult" plot placement --in hg-law.json --in c.json --label "hypergraph, law" --label contiguous --out ct.png \
  > /dev/null
is_png ct.png

"$occult" bench infer --config "$src/configs/tiny.json" --batch 2 --prompt-tokens 4 --decode-steps 2 --repeats 1 \
  --warmup 0 --json > b2.json
"$occult" bench infer --config "$src/configs/tiny.json" --batch 4 --prompt-tokens 4 --decode-steps 2 --repeats 1 \
  --warmup 0 --json > b4.json
"$occult" plot infer --in b2.json --in b4.json --out latency.png > /dev/null
is_png latency.png

# expect_error MESSAGE_PART COMMAND...: COMMAND fails with one "occult: error:" line holding MESSAGE_PART.
expect_error() {
  part=$1
  shift
  if "$@" > out.txt 2> err.txt; then fail "accepted: $*"; fi
  [ "$(grep -c '^occult: error:' err.txt)" = 1 ] || fail "$*: expected one error line, got: $(cat err.txt)"
  grep -qF -- "$part" err.txt || fail "$*: expected '$part', got: $(cat err.txt)"
}
printf '{"step":1,"loss":2.0,"tokens_per_s":5}\nnot json\n' > broken.jsonl
expect_error "broken.jsonl line 2: not JSON" "$occult" plot train --in broken.jsonl --out x.png
expect_error 'c.json layers[0] metrics: expected key "replicas_per_token"' \
  sh -c "sed 's/replicas_per_token/rpt/g' c.json > bad.json && mv bad.json c.json && \"$occult\" plot placement --in c.json --out x.png"
expect_error 'b2.json: expected key "variants"' sh -c "echo '{}' > b2.json && \"$occult\" plot infer --in b2.json --out x.png"
expect_error "--in missing.json does not exist" "$occult" plot infer --in missing.json --out x.png
# Without gnuplot on PATH: the error names the Debian package, and no picture is left behind.
expect_error "install the Debian package gnuplot-nox" env PATH=/nonexistent "$occult" plot train --in runs/log.jsonl \
  --out none.png
[ ! -e none.png ] || fail "a PNG was written without gnuplot"
echo "plot cli: all checks passed"
