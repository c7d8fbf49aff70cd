#!/usr/bin/env bash
# Issue 18, study 2 (seed 000): LoRA +/- PerforatedAI dendrites on a decoder sequence classifier. SmolLM2-135M-Instruct
# with a classification head, LoRA on the seven projections, balanced class weights, PhraseBank AllAgree 80/10/10;
# with and without one dendrite set on the top two blocks' LoRA MLP projections, identical otherwise.
#
#   bash reports/smollm2_dendrites/run.sh          # from anywhere; it runs in the repository root
#
# Steps:
#   probe  `fit` of 12 training batches with an fp32 base (bf16 autocast) and with a 4-bit NF4 base (bitsandbytes
#          on CPU), whole-process seconds of each → nf4_probe.txt here (informational: the rows use the fp32 base).
#   rows   smollm2_phrasebank_lora (configs/smollm2_phrasebank_lora.yaml), smollm2_phrasebank_lora_dendritic
#          (its twin) and smollm2_phrasebank_lora_restart (the plain run with the dendritic run's optimizer +
#          schedule restart after epoch 1, the control), training seeds SEEDS, each one `finlight seeds --select
#          best` (3 epochs, the best val macro-F1 checkpoint tested once).
#   nf4    the plain and the dendritic row on a 4-bit NF4 base (configs/smollm2_phrasebank_lora_nf4.yaml and
#          configs/smollm2_phrasebank_lora_dendritic_nf4.yaml, identical otherwise), training seeds NF4_SEEDS.
#   report `finlight report` of all fp32-base runs, each row paired seed by seed against the plain one (report.md,
#          runs.csv, groups.csv, paired.csv, val_curves.png: val acc / macro-F1 / loss per epoch), the dendritic
#          row against the restart control (vs_restart/), and the first
#          seed's tested checkpoints once more through `test` with the LatencyProfiler (parameters, checkpoint
#          size, ms at batch 1, samples/s at batch 16, on CPU): latency.md here.
#          The NF4 rows with the fp32-base plain and dendritic runs of the same seeds, paired against the NF4 plain
#          row → nf4/ here.
# Resumable: a (row, seed) is done when logs/<row>/version_N/ holds its finished test (reports/done_run.py); the probe
# when nf4_probe.txt exists. Console output: logs/smollm2_dendrites/<step>.out; one line per step in progress.log.
#
# Environment: PYTHON (default .venv/bin/python), SEEDS (default "1 2 3"), NF4_SEEDS (default "1"; empty: no NF4
# rows), TRAIN_SUBSAMPLE (default 800: a stratified
# subsample of that many training sentences, the same for both rows; empty = the whole split), PROBE_ONLY=1 (stop after
# the probe), DRY_RUN=1.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, step, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
OUT=reports/smollm2_dendrites
WORK=logs/smollm2_dendrites
PROGRESS=$WORK/progress.log
BASELINE=smollm2_phrasebank_lora
CONTROL=smollm2_phrasebank_lora_restart
ROWS=(smollm2_phrasebank_lora smollm2_phrasebank_lora_dendritic "$CONTROL")
NF4_BASELINE=smollm2_phrasebank_lora_nf4
NF4_ROWS=("$NF4_BASELINE" smollm2_phrasebank_lora_dendritic_nf4)
read -r -a NF4_SEED_LIST <<< "${NF4_SEEDS-1}"
LATENCY_ROWS=(smollm2_phrasebank_lora smollm2_phrasebank_lora_dendritic)  # the control has the plain architecture
METRICS=(test/acc test/macro_f1 test/weighted_f1 test/loss test/dendrite_sets)
EXTRA=(--trainer.enable_progress_bar false)
TRAIN_SUBSAMPLE=${TRAIN_SUBSAMPLE-800}  # TRAIN_SUBSAMPLE= (empty) trains on the whole split
[ -n "$TRAIN_SUBSAMPLE" ] && EXTRA+=(--data.init_args.train_subsample "$TRAIN_SUBSAMPLE")
mkdir -p "$WORK"
DRY=${DRY_RUN:-0}
[ "$DRY" = 1 ] && PROGRESS=/dev/null
FAILED=0

done_run() { "$PYTHON" reports/done_run.py "$1" "$1" best "$2"; }  # row (= config stem), seed

say "study start: seeds ${SEED_LIST[*]}, train subsample ${TRAIN_SUBSAMPLE:-all}, python $PYTHON, cpu: $(lscpu | grep -o 'avx512_bf16\|avx512_vnni\|amx_bf16\|avx2' | sort -u | tr '\n' ' ')"

# --- probe: is a 4-bit NF4 base usable on this CPU? (whole-process seconds of a 12-batch fit)
if [ -f "$OUT/nf4_probe.txt" ]; then
  say "skip  probe (done: $OUT/nf4_probe.txt)"
elif [ "$DRY" = 1 ]; then
  echo "would run: the NF4 probe (10 timed training batches each with an fp32 and an NF4 base)"
else
  : > "$WORK/probe.tsv"
  for quant in none nf4; do
    args=()
    [ "$quant" = nf4 ] && args=(--model.init_args.quantization '{bits: 4, quant_type: nf4, double_quant: true, compute_dtype: bfloat16}')
    start=$SECONDS
    if step "probe_$quant" "$PYTHON" -m finlight fit --config "configs/$BASELINE.yaml" --experiment "probe_$quant" \
        --trainer.max_steps 12 --trainer.limit_val_batches 0 --trainer.num_sanity_val_steps 0 \
        --trainer.enable_checkpointing false "${args[@]}" "${EXTRA[@]}"; then
      echo -e "$quant\t$((SECONDS - start))" >> "$WORK/probe.tsv"
    fi
  done
  "$PYTHON" - "$WORK/probe.tsv" "$OUT/nf4_probe.txt" <<'PY'
import sys
rows = dict(line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line)
text = ["12 training batches of 16 (max_length 128) through `finlight fit`, whole-process seconds (imports and"
        " loading included):"]
text += [f"  {'fp32 base + bf16 autocast' if k == 'none' else 'NF4 base, bf16 compute'}: {v} s" for k, v in rows.items()]
if len(rows) == 2:
    ratio = int(rows["nf4"]) / max(int(rows["none"]), 1)
    text.append(f"NF4 / fp32 = {ratio:.2f}x: " + ("NF4 runs on this CPU at about the fp32 speed (at this resolution: "
                "loading dominates 12 batches)" if ratio <= 1.3 else "NF4 is slower on this CPU (it saves memory, not time)")
                + "; the study's configs use the fp32 base either way (an NF4 pair: --model.init_args.quantization)")
else:
    text.append("NF4 did not run on this CPU (see logs/smollm2_dendrites/probe_nf4.out): the study uses the fp32 base")
open(sys.argv[2], "w").write("\n".join(text) + "\n")
print("\n".join(text))
PY
fi

[ "${PROBE_ONLY:-0}" = 1 ] && exit "$FAILED"

# --- the rows, seed by seed (fp32 base, then the NF4 pair)
train_rows() {  # seeds (one word), rows…
  local seeds=$1 row seed folder
  shift
  for row in "$@"; do
    for seed in $seeds; do
      folder=$(done_run "$row" "$seed")
      if [ -n "$folder" ]; then say "skip  $row seed $seed (done: $folder)"; continue; fi
      step "$row.seed$seed" "$PYTHON" -m finlight seeds --config "configs/$row.yaml" --seeds "$seed" --select best \
        --experiment "$row" --report_dir "$WORK/seeds_$row" "${EXTRA[@]}" || break
    done
  done
}
train_rows "${SEED_LIST[*]}" "${ROWS[@]}"
[ ${#NF4_SEED_LIST[@]} -gt 0 ] && train_rows "${NF4_SEED_LIST[*]}" "${NF4_ROWS[@]}"

# --- report and latency table
RUNS=()
MISSING=()
VS_CONTROL=()
declare -A FIRST
for row in "${ROWS[@]}"; do
  for seed in "${SEED_LIST[@]}"; do
    folder=$(done_run "$row" "$seed")
    if [ -n "$folder" ]; then
      RUNS+=("$folder")
      [ "$row" != "$BASELINE" ] && VS_CONTROL+=("$folder")
      [ "$seed" = "${SEED_LIST[0]}" ] && FIRST[$row]=$folder
    else
      MISSING+=("$row/seed$seed")
    fi
  done
done
NF4_RUNS=()
for row in "${NF4_ROWS[@]}" "$BASELINE" smollm2_phrasebank_lora_dendritic; do
  for seed in "${NF4_SEED_LIST[@]}"; do
    folder=$(done_run "$row" "$seed")
    if [ -n "$folder" ]; then NF4_RUNS+=("$folder"); else MISSING+=("$row/seed$seed"); fi
  done
done
if [ "$DRY" = 1 ]; then
  echo "would run: finlight report ${NF4_RUNS[*]} --baseline $NF4_BASELINE → $OUT/nf4"
  echo "would run: finlight report ${RUNS[*]} [+ ${MISSING[*]}] --baseline $BASELINE → $OUT (and vs $CONTROL → $OUT/vs_restart); latency (test + LatencyProfiler) of the first seed → $OUT/latency.md"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi
step report "$PYTHON" -m finlight report "${RUNS[@]}" --baseline "$BASELINE" --metrics "${METRICS[@]}" --output_dir "$OUT"
[ ${#NF4_SEED_LIST[@]} -gt 0 ] && step report_nf4 "$PYTHON" -m finlight report "${NF4_RUNS[@]}" \
  --baseline "$NF4_BASELINE" --metrics "${METRICS[@]}" --output_dir "$OUT/nf4"
step report_vs_restart "$PYTHON" -m finlight report "${VS_CONTROL[@]}" --baseline "$CONTROL" --metrics "${METRICS[@]}" \
  --output_dir "$OUT/vs_restart"
# parameters, checkpoint size, latency at batch 1 and throughput at batch 16 of the first seed's tested checkpoints:
# `test` once more with the LatencyProfiler (the same checkpoint and test split, so the same metrics) in its own
# experiment folder; compression_report.py cannot load adapter-only (LoRA / dendritic) checkpoints
for row in "${LATENCY_ROWS[@]}"; do
  ckpt=$(tested_checkpoint "${FIRST[$row]}")
  latency=$(ls -t logs/${row}_latency/version_*/latency.json 2>/dev/null | head -n 1)
  if [ -n "$latency" ] && [ "$latency" -nt "$ckpt" ]; then say "skip  latency of $row (done: $latency)"; continue; fi
  step "latency_$row" "$PYTHON" -m finlight test --config "configs/$row.yaml" --ckpt_path "$ckpt" \
    --experiment "${row}_latency" --trainer.callbacks+=finlight.core.callbacks.LatencyProfiler \
    --trainer.callbacks.batch_sizes "[1, 16]" --trainer.callbacks.warmup 3 --trainer.callbacks.iterations 20 \
    --trainer.callbacks.num_threads 2 "${EXTRA[@]}"
done
"$PYTHON" - "$OUT/latency.md" "${LATENCY_ROWS[@]}" <<'PY'
import glob, json, os, sys
lines = ["| row | parameters | trainable | checkpoint MB | ms @ batch 1 | samples/s @ batch 16 | peak RSS MB |",
         "|---|---|---|---|---|---|---|"]
for row in sys.argv[2:]:
    files = sorted(glob.glob(f"logs/{row}_latency/version_*/latency.json"), key=os.path.getmtime)
    if not files:
        continue
    lat = json.load(open(files[-1]))
    b = lat.get("batches", {})
    rss = lat.get("memory", {}).get("peak_process_rss_mb", float("nan"))
    lines.append(f"| {row} | {lat['parameters']:,} | {lat['trainable_parameters']:,} | {lat['disk_size_mb']:.1f} | "
                 f"{b['1']['ms_mean']:.1f} | {b['16']['samples_per_s']:.1f} | {rss:.0f} |")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
say "study end (failed: $FAILED)"
[ "$FAILED" = 0 ]
