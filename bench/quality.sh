#!/usr/bin/env bash
# The quality experiment, one command on 4 ranks: pretrain a base MoE model
# (configs/quality-base.json) on tinyshakespeare; profile its routing on held-out Shakespeare;
# place its experts (hypergraph, D = 4) and embed the router-probability similarity into the
# placement; fine-tune on gsm8k-train with the same step budget under standard routing, M=2
# score, M=2 similarity, M=2 device-limited and M=1 similarity pruning, once per seed; evaluate
# every fine-tuned model on gsm8k-test under its own routing, and the base model too.
# Writes OUT/table.md (mean and spread of the test loss, C_T, fine-tune tokens/s, bytes per
# step), OUT/points.dat and a PNG plot of test loss vs C_T (gnuplot).
#
# Usage: bench/quality.sh [--quick] [--build DIR] [--out DIR] [--seeds "1 2 3"] [--ranks 4]
#          [--pretrain-steps N] [--steps N] [--eval-bytes N] [--profile-tokens N] [--plot FILE]
#          [--wire f32|bf16|f16|fp8] [--reuse-base] [--table-only]
# Each flag also reads an environment variable: OCCULT_QUALITY_BUILD, _OUT, _SEEDS, _RANKS,
# _PRETRAIN_STEPS, _STEPS, _EVAL_BYTES, _PROFILE_TOKENS, _PLOT, _WIRE. --wire is the exchange
# format of every fine-tune and evaluation (the base model pretrains with F32 rows, so one base
# serves every format). --quick is a smoke run of the
# whole pipeline (tiny step counts, one seed, a 4 kB test prefix) that writes under OUT/quick.
# --reuse-base skips pretraining when OUT/base already holds a checkpoint (re-running arms);
# --table-only rebuilds the table and plot from OUT's results (seeds whose five arms all finished).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${OCCULT_QUALITY_BUILD:-$here/build}
out=${OCCULT_QUALITY_OUT:-}
seeds=${OCCULT_QUALITY_SEEDS:-1 2 3}
ranks=${OCCULT_QUALITY_RANKS:-4}
pretrain_steps=${OCCULT_QUALITY_PRETRAIN_STEPS:-300}
steps=${OCCULT_QUALITY_STEPS:-100}
eval_bytes=${OCCULT_QUALITY_EVAL_BYTES:-65536}
profile_tokens=${OCCULT_QUALITY_PROFILE_TOKENS:-16384}
plot=${OCCULT_QUALITY_PLOT:-}
wire=${OCCULT_QUALITY_WIRE:-f32}
quick=0
reuse_base=0
table_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --reuse-base) reuse_base=1 ;;
    --table-only) table_only=1 ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    --ranks) ranks=$2; shift ;;
    --pretrain-steps) pretrain_steps=$2; shift ;;
    --steps) steps=$2; shift ;;
    --eval-bytes) eval_bytes=$2; shift ;;
    --profile-tokens) profile_tokens=$2; shift ;;
    --plot) plot=$2; shift ;;
    --wire) wire=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench/quality.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
out=${out:-$build/quality}
if [ "$quick" = 1 ]; then
  out=$out/quick
  seeds=1
  pretrain_steps=12
  steps=4
  eval_bytes=4096
  profile_tokens=2048
fi
plot=${plot:-$out/quality.png}
occult=$build/occult
[ -x "$occult" ] || { echo "bench/quality.sh: no occult binary at $occult (--build DIR)" >&2; exit 2; }
# Exit status 77 (the usual "skipped"): ctest's quality_bench_quick skips on a machine without gnuplot.
command -v gnuplot > /dev/null || { echo "bench/quality.sh: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 77; }
cfg=$here/configs/quality-base.json
shakespeare=$here/data/corpus/tinyshakespeare.txt
train_text=$here/data/corpus/gsm8k-train.txt
test_text=$here/data/corpus/gsm8k-test.txt
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe -x OPENBLAS_NUM_THREADS=1 -np "$ranks")
mkdir -p "$out"
started=$(date +%s)
log() { echo "== [$(( $(date +%s) - started ))s] $*"; }
# Every command is echoed into OUT/commands.txt, so the results can cite exactly what ran.
[ "$table_only" = 1 ] || : > "$out/commands.txt"
run() { echo "$*" >> "$out/commands.txt"; "$@"; }
arms=("standard 0 none" "m2-score 2 score" "m2-similarity 2 similarity" "m2-device-limited 2 device-limited"
      "m1-similarity 1 similarity")
if [ "$table_only" = 0 ]; then

# 1. Pretrain the base model on Shakespeare (its own validation split: the last 10%).
if [ "$reuse_base" = 1 ] && [ -f "$out/base/model.safetensors" ]; then
  log "reusing the base checkpoint $out/base"
else
  log "pretraining $cfg on tinyshakespeare: $pretrain_steps steps, $ranks ranks"
  run "${mpi[@]}" "$occult" train --config "$cfg" --data "$shakespeare" --dispatch occult \
    --steps "$pretrain_steps" --batch 16 --seq-len 128 --lr 3e-3 --warmup $(( pretrain_steps / 10 + 1 )) \
    --seed 1234 --save "$out/base" --log "$out/base-train.jsonl" --no-progress --json > "$out/base-train.json"
fi

# 2. Profile its routing on held-out Shakespeare: the validation split the pretraining never trained on.
size=$(stat -c %s "$shakespeare")
tail -c $(( size / 10 )) "$shakespeare" > "$out/heldout.txt"
log "profiling the base routing on $profile_tokens held-out tokens"
run "${mpi[@]}" "$occult" profile --checkpoint "$out/base" --data "$out/heldout.txt" --tokens "$profile_tokens" \
  --seq-len 128 --out "$out/profile.safetensors" --json > "$out/profile.json"

# 3. Place (hypergraph, D = ranks) and embed the router-probability similarity for Scheme-2;
#    the offline prune report of M = 1..D comes for free.
log "placing with hypergraph on $ranks devices"
run "$occult" place --traces "$out/profile.safetensors" --devices "$ranks" --strategy hypergraph \
  --out "$out/placement.json" --json > "$out/place.json"
run "$occult" prune --traces "$out/profile.safetensors" --placement "$out/placement.json" --max-devices all \
  --scheme similarity --embed-similarity "$out/placement-sim.json" > "$out/prune-offline.txt"
placement=$out/placement-sim.json

# 4. Evaluate and fine-tune. Arms (above): name, M, scheme (M = 0: no pruning).
prune_flags() { [ "$1" = 0 ] && return 0; echo "--prune-devices $1 --prune-scheme $2"; }
evaluate() {  # evaluate CHECKPOINT M SCHEME OUT.json
  # shellcheck disable=SC2046
  run "${mpi[@]}" "$occult" eval --checkpoint "$1" --data "$test_text" --tokens "$eval_bytes" --seq-len 128 \
    --placement "$placement" --wire "$wire" $(prune_flags "$2" "$3") --json > "$4"
}
log "evaluating the base model on $eval_bytes bytes of gsm8k-test"
evaluate "$out/base" 0 none "$out/eval-base.json"
for seed in $seeds; do
  for arm in "${arms[@]}"; do
    read -r name m scheme <<< "$arm"
    log "seed $seed, arm $name: fine-tuning $steps steps on gsm8k-train"
    ckpt=$out/ft-$name-s$seed
    # shellcheck disable=SC2046
    run "${mpi[@]}" "$occult" train --config "$cfg" --data "$train_text" --init "$out/base" --dispatch occult \
      --placement "$placement" --wire "$wire" $(prune_flags "$m" "$scheme") --steps "$steps" --batch 16 --seq-len 128 \
      --lr 1e-3 --warmup $(( steps / 10 + 1 )) --seed "$seed" --save "$ckpt" --no-progress --json \
      > "$out/train-$name-s$seed.json"
    evaluate "$ckpt" "$m" "$scheme" "$out/eval-$name-s$seed.json"
    rm -rf "$ckpt"  # weights are not needed after the evaluation; keep the disk small
  done
done
fi

# 5. The table and the plot.
log "writing $out/table.md and $plot"
python3 - "$out" "$seeds" "$steps" "$eval_bytes" "$wire" "${arms[@]}" <<'PY'
import json, os, statistics, sys
out, seeds, steps, eval_bytes, wire, arms = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
# Only seeds whose every arm finished (an interrupted run still gives a table of what ran).
seeds = [s for s in seeds if all(os.path.exists(f"{out}/eval-{a.split()[0]}-s{s}.json") for a in arms)]
if not seeds:
    sys.exit(f"no seed has all {len(arms)} arms evaluated in {out}")
def load(path):
    return json.load(open(path))
def spread(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0
base = load(f"{out}/eval-base.json")
rows, points = [], []
std_mean = None
for arm in arms:
    name, m, scheme = arm.split()
    ev = [load(f"{out}/eval-{name}-s{s}.json") for s in seeds]
    tr = [load(f"{out}/train-{name}-s{s}.json") for s in seeds]
    loss = [e["loss"] for e in ev]
    mean = statistics.mean(loss)
    if std_mean is None:
        std_mean = mean
    ct = statistics.mean(e["replicas_per_token"] for e in ev)
    changed = statistics.mean(e["tokens_changed"] for e in ev)
    tps = statistics.mean(t["tokens_per_s"] for t in tr)
    tps_sd = spread([t["tokens_per_s"] for t in tr])
    bps = statistics.mean(t["bytes_per_step"] for t in tr)
    sbps = statistics.mean(t["standard_bytes_per_step"] for t in tr)
    train_ct = statistics.mean(t["replicas_per_token"] for t in tr)
    rows.append(f"| {name} | {m if m != '0' else '-'} | {scheme if scheme != 'none' else '-'} | "
                f"{mean:.4f} ± {spread(loss):.4f} | {100 * (mean / std_mean - 1):+.2f}% | {ct:.3f} | {train_ct:.3f} | "
                f"{100 * changed:.1f}% | {tps:.0f} ± {tps_sd:.0f} | {bps / 1e6:.2f} MB | {sbps / 1e6:.2f} MB |")
    points.append((name, ct, mean, spread(loss)))
header = ("| arm | M | scheme | test loss (nats/byte, mean ± sd) | vs standard | C_T (test) | C_T (fine-tune) | "
          "tokens pruning changed | fine-tune tokens/s | bytes/step (occult) | bytes/step (standard dispatch) |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
base_row = (f"| base (no fine-tune) | - | - | {base['loss']:.4f} | {100 * (base['loss'] / std_mean - 1):+.2f}% | "
            f"{base['replicas_per_token']:.3f} | - | - | - | - | - |")
text = (f"{len(seeds)} seed(s) ({' '.join(seeds)}), {steps} fine-tune steps x 16 x 128 tokens, test loss over the "
        f"first {eval_bytes} bytes of gsm8k-test; {wire} exchange rows.\n\n" + header + "\n" + base_row + "\n" + "\n".join(rows) + "\n")
open(f"{out}/table.md", "w").write(text)
print(text)
with open(f"{out}/points.dat", "w") as f:
    f.write("# arm C_T loss_mean loss_sd (fine-tuned arms; the base model is in the title)\n")
    for name, ct, mean, sd in points:
        f.write(f"{name} {ct} {mean} {sd}\n")
# One series per arm, so the legend names them (labels would overlap at equal C_T).
series = ", ".join(f'"{out}/points.dat" every ::{i}::{i} using 2:3:4 with yerrorbars pt {5 + i} ps 1.4 lw 1.5 '
                   f'title "{name}"' for i, (name, _, _, _) in enumerate(points))
open(f"{out}/plot.gp", "w").write(f"""set terminal pngcairo size 800,520 font ",10" noenhanced
set title "gsm8k-test loss vs C_T after {steps} fine-tuning steps on gsm8k-train (seeds {' '.join(seeds)})\\nbase model before fine-tuning: {base['loss']:.3f} nats/byte at C_T {base['replicas_per_token']:.2f}"
set xlabel "replicas per token C_T on the test text (devices a token touches)"
set ylabel "test loss (nats/byte), mean and sd over seeds"
set grid
set key outside right top
set offsets 0.25, 0.25, 0.002, 0.002
plot {series}
""")
PY
gnuplot -e "set output '$plot'" "$out/plot.gp"
log "done in $(( $(date +%s) - started )) s: $out/table.md, $plot"
