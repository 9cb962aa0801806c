#!/usr/bin/env bash
# `occult tokenize --json` and `--decode` on the shipped Qwen3 tokenizer: known ids, the JSON
# shape, a round trip through an ids file, and a clear error for invalid UTF-8.
# Usage: tokenize_cli_test.sh OCCULT_BINARY SOURCE_DIR
set -euo pipefail
occult=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tok="$src/data/tokenizers/qwen3"

printf 'Hello, world!' > "$tmp/hello.txt"
got=$("$occult" tokenize --tokenizer "$tok" --text-file "$tmp/hello.txt" --json)
[ "$got" = '{"bytes":13,"ids":[9707,11,1879,0],"tokens":4}' ] || { echo "json: $got"; exit 1; }
got=$("$occult" tokenize --tokenizer "$tok/tokenizer.json" --text-file "$tmp/hello.txt")
[ "$got" = '9707 11 1879 0' ] || { echo "plain: $got"; exit 1; }

printf '<|im_start|>user\nCafé 123 — 机器学习\n' > "$tmp/text.txt"
"$occult" tokenize --tokenizer "$tok" --text-file "$tmp/text.txt" --json > "$tmp/ids.json"
"$occult" tokenize --tokenizer "$tok" --decode --ids-file "$tmp/ids.json" > "$tmp/back.txt"
cmp "$tmp/text.txt" "$tmp/back.txt" || { echo "round trip (json ids) differs"; exit 1; }
"$occult" tokenize --tokenizer "$tok" --text-file "$tmp/text.txt" > "$tmp/ids.txt"
"$occult" tokenize --tokenizer "$tok" --decode --ids-file "$tmp/ids.txt" > "$tmp/back2.txt"
cmp "$tmp/text.txt" "$tmp/back2.txt" || { echo "round trip (plain ids) differs"; exit 1; }

printf 'ab\xffcd' > "$tmp/bad.txt"
if "$occult" tokenize --tokenizer "$tok" --text-file "$tmp/bad.txt" 2> "$tmp/err.txt"; then
  echo "invalid UTF-8 accepted"; exit 1
fi
grep -q "byte offset 2" "$tmp/err.txt" || { echo "error: $(cat "$tmp/err.txt")"; exit 1; }
echo "tokenize CLI: PASS"
