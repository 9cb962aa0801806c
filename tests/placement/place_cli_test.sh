#!/bin/sh
# End-to-end check of `occult place` and `occult evaluate` as a user (or another program) runs
# them, on the shipped traces and a small synthetic one.
# Usage: place_cli_test.sh OCCULT_BINARY SOURCE_DIR SCRATCH_DIR
set -eu
occult=$1
src=$2
dir=$3
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }
intent=$src/data/traces/dsv2lite-esft-intent.safetensors
law=$src/data/traces/dsv2lite-esft-law.safetensors

# place: per-layer table, summary line, and the placement file of DESIGN.md.
"$occult" place --traces "$intent" --devices 4 --out p.json > place.txt 2> /dev/null
grep -q "^mean " place.txt || fail "place: no mean row: $(cat place.txt)"
grep -q "placed 26 layers x 64 experts on 4 devices with 'hypergraph'" place.txt ||
  fail "place summary: $(tail -1 place.txt)"
grep -q '"format": "occult-placement/1"' p.json || fail "placement format field"
grep -q '"num_devices": 4' p.json || fail "placement num_devices"
[ "$(grep -c '"expert_to_device"' p.json)" = 26 ] || fail "placement must hold 26 layers"

# The load limit holds on the calibration trace (imbalance column <= 1.100 on every layer).
awk '$1 ~ /^[0-9]+$/ && $5 > 1.1 { bad = 1 } END { exit bad }' place.txt ||
  fail "a layer exceeds --max-imbalance 1.10: $(cat place.txt)"

# evaluate --json: the exact documented shape (README, `occult evaluate`).
"$occult" evaluate --traces "$law" --placement p.json --json > eval.json
grep -q '^{"strategy":"hypergraph","num_devices":4,"top_k":6,"layers":\[{"layer":0,"replicas_per_token":[0-9.]*,"remote_replicas_per_token":[0-9.]*,"intra_collab_ratio":[0-9.]*,"load_imbalance":[0-9.]*},' eval.json ||
  fail "evaluate --json layer shape: $(head -c 300 eval.json)"
grep -q '"mean":{"replicas_per_token":[0-9.]*,"remote_replicas_per_token":[0-9.]*,"intra_collab_ratio":[0-9.]*,"load_imbalance":[0-9.]*}}$' eval.json ||
  fail "evaluate --json mean: $(tail -c 300 eval.json)"
"$occult" evaluate --traces "$law" --placement p.json > eval.txt
grep -q "mean replicas_per_token [0-9.]* of top-k 6" eval.txt || fail "evaluate summary: $(tail -1 eval.txt)"

# Several calibration traces, nodes, a fixed seed: deterministic.
"$occult" place --traces "$intent" --traces "$law" --devices 8 --nodes 2 --seed 3 --out n1.json > /dev/null 2>&1
"$occult" place --traces "$intent" --traces "$law" --devices 8 --nodes 2 --seed 3 --out n2.json > /dev/null 2>&1
sed '/"seconds"/d; s/"seconds":[0-9.e-]*//' n1.json > n1.cmp
sed '/"seconds"/d; s/"seconds":[0-9.e-]*//' n2.json > n2.cmp
cmp n1.cmp n2.cmp || fail "same seed gave different placements"
grep -q '"nodes_per_token"' n1.json || fail "nodes_per_token missing with --nodes 2"

# --strategy all: one row per strategy.
"$occult" place --traces "$law" --devices 4 --strategy all --out all.json > all.txt 2> /dev/null
for s in contiguous random greedy-fps metis hypergraph; do
  grep -q "^$s " all.txt || fail "--strategy all lacks $s: $(cat all.txt)"
done
# The "within limit" column says, for each strategy, whether its worst layer (imbalance max, column
# 6) kept --max-imbalance; hypergraph enforces the limit, contiguous does not hold it on this trace.
grep -q "imbalance max  within limit" all.txt || fail "--strategy all lacks the within limit column: $(cat all.txt)"
awk -v limit=1.10 '$1 ~ /^(contiguous|random|greedy-fps|metis|hypergraph)$/ {
       rows++; if ($7 != (($6 <= limit) ? "yes" : "no")) bad = 1 }
     END { exit bad || rows != 5 }' all.txt || fail "within limit disagrees with imbalance max: $(cat all.txt)"
grep -q "^hypergraph .* yes " all.txt || fail "hypergraph must be within the limit: $(cat all.txt)"
grep -q "^contiguous .* no " all.txt || fail "contiguous must be over the limit: $(cat all.txt)"
"$occult" place --traces "$law" --devices 4 --strategy all --max-imbalance 100 --json --out all2.json > all2.json.txt 2> /dev/null
[ "$(grep -c '"within_max_imbalance": true' all2.json.txt)" = 5 ] ||
  fail "--max-imbalance 100: every strategy must be within it: $(cat all2.json.txt)"

# Bad input: clear errors naming the flag or the mismatch.
if "$occult" place --traces "$law" --devices 65 --out x.json > err1.txt 2>&1; then fail "--devices 65 accepted"; fi
grep -q "occult: error: --devices must lie in \[1, num_experts = 64\], got 65" err1.txt || fail "$(cat err1.txt)"
if "$occult" place --traces "$law" --devices 8 --nodes 3 --out x.json > err2.txt 2>&1; then fail "--nodes 3 accepted"; fi
grep -q "occult: error: --nodes must divide --devices (8), got 3" err2.txt || fail "$(cat err2.txt)"
if "$occult" place --traces "$law" --devices 8 --strategy kmeans --out x.json > err3.txt 2>&1; then fail "kmeans accepted"; fi
grep -q "unknown placement strategy 'kmeans'" err3.txt || fail "$(cat err3.txt)"
"$occult" trace synth --experts 32 --top-k 4 --layers 26 --tokens 200 --seed 1 --out e32.safetensors > /dev/null 2>&1
if "$occult" evaluate --traces e32.safetensors --placement p.json > err4.txt 2>&1; then fail "E mismatch accepted"; fi
grep -q "p.json places 64 experts per layer but e32.safetensors has 32" err4.txt || fail "$(cat err4.txt)"
"$occult" trace synth --experts 64 --top-k 6 --layers 3 --tokens 200 --seed 1 --out l3.safetensors > /dev/null 2>&1
if "$occult" evaluate --traces l3.safetensors --placement p.json > err5.txt 2>&1; then fail "layer mismatch accepted"; fi
grep -q "p.json places layer 3 but l3.safetensors has only 3 layers" err5.txt || fail "$(cat err5.txt)"

# Replicas: spare slots hold copies; evaluate and prune route to them; the MoE layer refuses them.
"$occult" place --traces "$law" --devices 4 --slots-per-device 17 --out r.json > r.txt 2> /dev/null
grep -q "placed 26 layers x 64 experts on 4 devices x 17 slots with 'hypergraph'" r.txt || fail "$(tail -1 r.txt)"
grep -q '"slots_per_device": 17' r.json || fail "placement slots_per_device"
[ "$(grep -c '"device_experts"' r.json)" = 26 ] || fail "every layer needs device_experts"
# Columns: layer, C_T, C_T primaries, copies, remote C_T, intra ratio, imbalance, ms. Copies never
# add devices, and the load limit still holds on the calibration trace.
awk '$1 ~ /^[0-9]+$/ && ($2 > $3 || $7 > 1.1) { bad = 1 } END { exit bad }' r.txt ||
  fail "replicas raised C_T or broke --max-imbalance: $(cat r.txt)"
# The flattening exponents are checked and named before any layer is placed.
if "$occult" place --traces "$law" --devices 4 --slots-per-device 17 --replica-flatten 2 --out bad.json \
    > /dev/null 2> flat.err; then fail "--replica-flatten 2 accepted"; fi
grep -q -- "--replica-flatten must lie in \[0, 1\], got 2" flat.err || fail "replica-flatten error: $(cat flat.err)"
if "$occult" place --traces "$law" --devices 4 --primary-flatten -1 --out bad.json > /dev/null 2> flat.err; then
  fail "--primary-flatten -1 accepted"
fi
grep -q -- "--primary-flatten must lie in \[0, 1\], got -1" flat.err || fail "primary-flatten error: $(cat flat.err)"
"$occult" evaluate --traces "$intent" --placement r.json > reval.txt
grep -q "(4 devices x 17 slots) .* mean replicas_per_token [0-9.]* of top-k 6 ([0-9.]* on the primaries alone)" reval.txt ||
  fail "evaluate with replicas: $(tail -1 reval.txt)"
"$occult" evaluate --traces "$intent" --placement r.json --json > reval.json
grep -q '"primary_replicas_per_token"' reval.json || fail "evaluate --json lacks primary_replicas_per_token"
"$occult" prune --traces "$intent" --placement r.json --max-devices 2 > rprune.txt 2> /dev/null
grep -q "pruned 26 layers x 8222 tokens (top-6 of 64 experts, 4 devices x 17 slots)" rprune.txt ||
  fail "prune with replicas: $(tail -1 rprune.txt)"
# The MoE layer reads replicated placements; one for 4 devices still needs 4 ranks.
if "$occult" bench layer --experts 64 --top-k 6 --placement r.json > err6.txt 2>&1; then fail "bench layer ran at 1 rank"; fi
grep -q "r.json: the placement is for 4 devices, but mpirun started 1 ranks" err6.txt || fail "$(cat err6.txt)"
if "$occult" place --traces "$law" --devices 4 --slots-per-device 15 --out x.json > err7.txt 2>&1; then fail "15 slots accepted"; fi
grep -q "occult: error: --slots-per-device 15 cannot hold 64 experts on 4 devices: needs at least ceil(E/D) = 16" err7.txt ||
  fail "$(cat err7.txt)"
# Expert groups: 8 groups of 8 whole on 4 devices (2 groups each) is the contiguous placement, so
# both rows give the same C_T; the group placement is the one written.
"$occult" place --traces "$law" --devices 4 --groups 8 --strategy contiguous --out g.json > g.txt 2> /dev/null
grep -q "placed 26 layers x 64 experts on 4 devices in 8 groups of 8 with 'groups'" g.txt || fail "$(tail -1 g.txt)"
grep -q '"strategy": "groups"' g.json || fail "group placement strategy field"
awk '$1 == "groups" { g = $2 } $1 == "contiguous" { c = $2 } END { exit !(g != "" && g == c) }' g.txt ||
  fail "groups must equal contiguous here: $(cat g.txt)"
mkdir -p grouped_model
cat > grouped_model/config.json <<'JSON'
{"model_type": "occult_moe", "vocab_size": 256, "hidden_size": 32, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_experts": 64, "num_experts_per_tok": 6, "moe_intermediate_size": 16,
 "max_position_embeddings": 64, "topk_method": "group_limited_greedy", "n_group": 16, "topk_group": 2}
JSON
"$occult" place --traces "$law" --devices 4 --groups-from-model grouped_model --strategy contiguous --out gm.json > gm.txt 2> /dev/null
grep -q "on 4 devices in 16 groups of 4 with 'groups'" gm.txt || fail "--groups-from-model: $(tail -1 gm.txt)"
if "$occult" place --traces "$law" --devices 4 --groups 3 --out x.json > err8.txt 2>&1; then fail "--groups 3 accepted"; fi
grep -q "occult: error: --groups 3 must be >= 1 and divide the 64 experts" err8.txt || fail "$(cat err8.txt)"
echo "place/evaluate CLI: all checks passed"
