#!/usr/bin/env bash
# Study 3 of issue 17 (seed: Giant-Killer): toxicity on the Civil Comments sample with PerforatedAI dendrites on a
# real pretrained encoder (bert-tiny-splade, 4.4 M), against the same run without dendrites and against MiniLM-L6
# (22.7 M) fine-tuned the same way; then ONNX exports of the baseline and a speed comparison.
#
#   bash reports/toxicity_dendrites/run.sh          # from anywhere; it runs in the repository root
#
# Steps (each skipped when its result exists, so a rerun continues where it stopped):
#   1. lr grids on validation, seed 1, fit only: the baseline config (LR_GRID), and MiniLM's if MINILM_LR_GRID →
#      lr_grid.csv (best val macro-F1 per lr; the configs carry the lr chosen from it — this script does not edit
#      them).
#   2. rows (group name = config name = logs/<name>/), one `finlight seeds` per (config, seed): fit, then test of
#      the best val/macro_f1 checkpoint; each test sweeps thresholds on validation (ThresholdSweep):
#        bert_tiny_splade_toxicity              bert-tiny-splade fine-tuned (the baseline)
#        bert_tiny_splade_toxicity_dendritic    the same + dendrites (n_epochs_to_switch 2 < patience 3)
#        bert_tiny_splade_toxicity_dendritic_switch1   the same with n_epochs_to_switch 1 (two epochs per set)
#        minilm_toxicity                        all-MiniLM-L6-v2 fine-tuned the same way
#      A (config, seed) is done when logs/<config>/version_N/ holds a finished test of it written after the config
#      last changed (reports/done_run.py); console output → logs/toxicity_dendrites/<config>.seed<N>.out.
#   3. `finlight report` of exactly those runs → report.md, runs.csv, groups.csv, paired.csv, confusion.csv,
#      val_curves.png, pr_curves.png here.
#   4. ONNX exports of the baseline's seed-1 tested checkpoint: fp32 + INT8 weight-only (export-onnx's default)
#      and INT8 dynamic-per-channel (the fast recipe) → logs/toxicity_dendrites/onnx_*.
#   5. benchmarks/speed_compare.py: the seed-1 tested checkpoints (a dendritic one holds as many dendrite sets as
#      its test/dendrite_sets says) and the ONNX graphs timed in turns in one process
#      on the test texts → speed.md, speed.json here.
# One line per step goes to logs/toxicity_dendrites/progress.log.
#
# Environment: PYTHON (default .venv/bin/python, else python), SEEDS (default "1 2 3"), MINILM_SEEDS (default: SEEDS),
# LR_GRID (baseline, default "2e-5 1e-4 5e-4 1e-3 2e-3"),
# MINILM_LR_GRID (default empty: MiniLM keeps its config's lr), DRY_RUN=1 (say what is done and what would run, run
# nothing).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, step_to, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
read -r -a MINILM_SEED_LIST <<< "${MINILM_SEEDS:-${SEEDS:-1 2 3}}"
read -r -a LR_LIST <<< "${LR_GRID:-2e-5 1e-4 5e-4 1e-3 2e-3}"
read -r -a MINILM_LR_LIST <<< "${MINILM_LR_GRID:-}"
OUT=reports/toxicity_dendrites
WORK=logs/toxicity_dendrites
PROGRESS=$WORK/progress.log
BASELINE=bert_tiny_splade_toxicity
DENDRITIC=bert_tiny_splade_toxicity_dendritic
DENDRITIC1=bert_tiny_splade_toxicity_dendritic_switch1
MINILM=minilm_toxicity
METRICS=(test/f1_toxic test/precision_toxic test/recall_toxic test/auroc test/average_precision
         test/f1_at_threshold test/precision_at_threshold test/recall_at_threshold val/threshold
         test/macro_f1 test/acc test/dendrite_sets)
DRY=${DRY_RUN:-0}
mkdir -p "$WORK"
[ "$DRY" = 1 ] && PROGRESS=/dev/null

done_run() { "$PYTHON" reports/done_run.py "$1" "$1" any "$2"; }  # newest finished run folder, or nothing
seeds_of() { if [ "$1" = "$MINILM" ]; then echo "${MINILM_SEED_LIST[*]}"; else echo "${SEED_LIST[*]}"; fi; }
FAILED=0


say "study start: seeds ${SEED_LIST[*]} (MiniLM: ${MINILM_SEED_LIST[*]}), lr grid ${LR_LIST[*]}, python $PYTHON"

# 1. lr grids (validation only: fit, no test), seed 1: the baseline config (its lr then serves the dendritic twin,
#    which must differ only in the dendrites) and MiniLM's
grid_fit() {  # config, lr
  local exp=lrgrid_$1_$2
  if ls checkpoints/$exp/version_*/epoch*.ckpt > /dev/null 2>&1; then
    say "skip  lr grid $1 $2 (done: $(ls checkpoints/$exp/version_*/epoch*.ckpt | head -1))"
    return 0
  fi
  step_to "lr grid $1 $2" "$WORK/$exp.out" "$PYTHON" -m finlight fit --config "configs/$1.yaml" --seed_everything 1 \
    --experiment "$exp" --model.init_args.learning_rate "$2" --trainer.enable_progress_bar false
}
for lr in "${LR_LIST[@]}"; do grid_fit "$BASELINE" "$lr"; done
for lr in "${MINILM_LR_LIST[@]}"; do grid_fit "$MINILM" "$lr"; done
if [ "$DRY" != 1 ]; then
  "$PYTHON" - "$BASELINE" "${LR_LIST[*]}" "$MINILM" "${MINILM_LR_LIST[*]}" > "$OUT/lr_grid.csv" <<'EOF'
import glob, re, sys

import torch

print("config,learning_rate,best_val_macro_f1,best_epoch,epochs_run,checkpoint")
for config, lrs in zip(sys.argv[1::2], sys.argv[2::2]):
    for lr in lrs.split():
        for path in sorted(glob.glob(f"checkpoints/lrgrid_{config}_{lr}/version_*/epoch*.ckpt")):
            m = re.search(r"epoch(\d+)-val_macro_f1([0-9.]+)\.ckpt$", path)
            last = torch.load(path.rsplit("/", 1)[0] + "/last.ckpt", map_location="cpu", weights_only=False)["epoch"]
            print(f"{config},{lr},{m.group(2)},{int(m.group(1))},{int(last) + 1},{path}")
EOF
  say "lr grid → $OUT/lr_grid.csv"
fi

# 2. the rows
for stem in "$BASELINE" "$DENDRITIC" "$DENDRITIC1" "$MINILM"; do
  for seed in $(seeds_of "$stem"); do
    folder=$(done_run "$stem" "$seed")
    if [ -n "$folder" ]; then say "skip  $stem seed $seed (done: $folder)"; continue; fi
    step_to "$stem seed $seed" "$WORK/$stem.seed$seed.out" "$PYTHON" -m finlight seeds --config "configs/$stem.yaml" \
      --seeds "$seed" --report_dir "$WORK/seeds_$stem" --trainer.enable_progress_bar false \
      && [ "$DRY" != 1 ] && say "      $stem seed $seed: $(done_run "$stem" "$seed")"
  done
done

# 3. the report
RUNS=()
MISSING=()
for stem in "$BASELINE" "$DENDRITIC" "$DENDRITIC1" "$MINILM"; do
  for seed in $(seeds_of "$stem"); do
    folder=$(done_run "$stem" "$seed")
    if [ -n "$folder" ]; then RUNS+=("$folder"); else MISSING+=("$stem/seed$seed"); fi
  done
done
if [ "$DRY" = 1 ]; then
  echo "would run: $PYTHON -m finlight report ${RUNS[*]} [+ the runs of: ${MISSING[*]}] --baseline $BASELINE --metrics ${METRICS[*]} --output_dir $OUT"
elif [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
else
  step_to "report of ${#RUNS[@]} runs against $BASELINE" "$WORK/report.out" "$PYTHON" -m finlight report "${RUNS[@]}" \
    --baseline "$BASELINE" --metrics "${METRICS[@]}" --output_dir "$OUT"
fi

# 4. ONNX exports of the baseline's seed-1 tested checkpoint
tested_ckpt() {  # the checkpoint a finished run folder tested
  "$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1] + '/test_metrics.json'))['checkpoint'])" "$1"
}
FIRST=${SEED_LIST[0]}
BASE_RUN=$(done_run "$BASELINE" "$FIRST")
DEND_RUN=$(done_run "$DENDRITIC" "$FIRST")
DEND1_RUN=$(done_run "$DENDRITIC1" "$FIRST")
MINI_RUN=$(done_run "$MINILM" "${MINILM_SEED_LIST[0]}")
if [ -z "$BASE_RUN" ] || [ -z "$DEND_RUN" ] || [ -z "$DEND1_RUN" ] || [ -z "$MINI_RUN" ]; then
  [ "$DRY" = 1 ] && { echo "would export ONNX and time the models once the seed-$FIRST runs exist"; exit 0; }
  say "no speed comparison: the seed-$FIRST runs are missing"
  exit 1
fi
BASE_CKPT=$(tested_ckpt "$BASE_RUN")
for recipe in weight-only dynamic-per-channel; do
  dir=$WORK/onnx_$recipe
  if [ -f "$dir/model.int8.onnx" ] && [ "$dir/model.int8.onnx" -nt "$BASE_CKPT" ]; then
    say "skip  ONNX $recipe (done: $dir)"
    continue
  fi
  step_to "ONNX export ($recipe) of $BASE_CKPT" "$WORK/onnx_$recipe.out" "$PYTHON" -m finlight export-onnx \
    --ckpt_path "$BASE_CKPT" --output_dir "$dir" --int8 --int8_recipe "$recipe" --max_length 128
done

# 5. speed (and quality) of the seed-1 models and the ONNX graphs, in turns in one process
step_to "speed comparison" "$OUT/speed.md" "$PYTHON" benchmarks/speed_compare.py --texts "$BASE_RUN/test_predictions.csv" \
  --model "bert_tiny_splade=$BASE_CKPT" --model "bert_tiny_splade_dendritic=$(tested_ckpt "$DEND_RUN")" \
  --model "bert_tiny_splade_dendritic_switch1=$(tested_ckpt "$DEND1_RUN")" \
  --model "minilm_l6=$(tested_ckpt "$MINI_RUN")" \
  --model "onnx_fp32=$WORK/onnx_weight-only/model.onnx" \
  --model "onnx_int8_weight_only=$WORK/onnx_weight-only/model.int8.onnx" \
  --model "onnx_int8_dynamic_per_channel=$WORK/onnx_dynamic-per-channel/model.int8.onnx" \
  --agree onnx_fp32:bert_tiny_splade --agree onnx_int8_weight_only:bert_tiny_splade \
  --agree onnx_int8_dynamic_per_channel:bert_tiny_splade \
  --positive_label toxic --batch_sizes 1 32 --threads 2 --rounds 5 --json "$OUT/speed.json"
[ "$DRY" = 1 ] || say "study done: $OUT/report.md, $OUT/speed.md"
[ "$FAILED" = 0 ]
