#!/usr/bin/env bash
# Issue 18, study 1: SmolLM2-135M-Instruct before vs after instruction tuning on the Kaggle FSA set (CPU).
#
#   bash reports/smollm2_fsa/run.sh          # from anywhere; it runs in the repository root
#
# Rows (all scored on the whole validation split of configs/smollm2_fsa_lora.yaml: 90/10 stratified, seed 42,
# duplicate-aware; there is no test split, as in the reference):
#   zero-shot  the untuned model (chat template, the seed's system instruction): `validate`, evaluation
#              constrained (label-word scoring) and generate (greedy, parsed; answers kept verbatim)
#   tuned      LoRA r 16 / alpha 16 / dropout 0 on the seven projections, lr 1e-4 cosine, warm-up 0.03, batch 4 x
#              accumulation 4, clip 1.0, one pass over a stratified subsample of SUBSAMPLE training prompts
#              (data.train_subsample, drawn with data.seed 42: the same rows for every training seed); no
#              validation during the fit (the budget buys one evaluation per mode), so the last checkpoint is the
#              one evaluated and validation chooses nothing; then `validate --ckpt_path <last>` in both modes.
#
# Resumable: a zero-shot row counts as done when logs/<row>/version_N/val_metrics.json exists (newer than the config,
# seed recorded: reports/done_run.py ... val); a fit when checkpoints/smollm2_fsa_lora/version_N/last.ckpt of that seed
# exists; a tuned evaluation when its val_metrics.json is newer than that checkpoint. Done steps are skipped.
# Console output of each step: logs/smollm2_fsa/<step>.out; one line per step: logs/smollm2_fsa/progress.log.
# At the end reports/smollm2_fsa/collect.py writes results.md / results.csv / paired.csv here (paired tests).
#
# Environment: PYTHON (default .venv/bin/python), SEEDS (default "1 2 3"), SUBSAMPLE (default 1024; "all" = the whole
# train split, one epoch), QUANT (default none; nf4 = 4-bit NF4 base, double quantisation, bf16 compute),
# REPORT_DIR (where collect.py writes, default reports/smollm2_fsa), ORDER (default fixed: every seed sees data.seed
# 42's batch order, so seeds differ in the LoRA A init only; seed = data.order_seed is the training seed too, so
# seeds also differ in batch order), DRY_RUN=1 (say what is done and what would run).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, step, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS-1 2 3}"  # SEEDS="" runs the zero-shot rows only
SUBSAMPLE=${SUBSAMPLE:-1024}
SUBSAMPLE_ARG=$SUBSAMPLE
[ "$SUBSAMPLE" = all ] && SUBSAMPLE_ARG=null
export REPORT_DIR=${REPORT_DIR:-reports/smollm2_fsa}
QUANT=${QUANT:-none}
ORDER=${ORDER:-fixed}
case "$ORDER" in fixed|seed) ;; *) echo "ORDER=$ORDER: use fixed or seed" >&2; exit 2 ;; esac
CONFIG=configs/smollm2_fsa_lora.yaml
STEM=smollm2_fsa_lora
WORK=logs/smollm2_fsa
PROGRESS=$WORK/progress.log
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null
QUANT_ARGS=()
if [ "$QUANT" = nf4 ]; then
  QUANT_ARGS=(--model.init_args.quantization '{bits: 4, quant_type: nf4, double_quant: true, compute_dtype: bfloat16}')
elif [ "$QUANT" != none ]; then
  echo "QUANT=$QUANT: use none or nf4" >&2; exit 2
fi
COMMON=(--trainer.enable_progress_bar false)

done_val() { "$PYTHON" reports/done_run.py "$1" "$STEM" any "$2" val; }  # row, seed

# newest last.ckpt of a finished fit with seed $1 (its run folder's config.yaml has that seed, subsample and batch
# order seed), or nothing
fit_ckpt() {
  local best="" n order=null
  [ "$ORDER" = seed ] && order=$1
  for folder in logs/$STEM/version_*; do
    [ -f "$folder/config.yaml" ] || continue
    n=${folder##*_}
    grep -q "^seed_everything: $1\$" "$folder/config.yaml" || continue
    grep -q "^    train_subsample: $SUBSAMPLE_ARG\$" "$folder/config.yaml" || continue
    grep -q "^    order_seed: $order\$" "$folder/config.yaml" || continue
    [ -f "checkpoints/$STEM/version_$n/last.ckpt" ] || continue
    [ "checkpoints/$STEM/version_$n/last.ckpt" -nt "$CONFIG" ] || continue
    best="checkpoints/$STEM/version_$n/last.ckpt"
  done
  echo "$best"
}

FAILED=0
say "study start: seeds ${SEED_LIST[*]}, subsample $SUBSAMPLE, batch order $ORDER, quantization $QUANT, python $PYTHON"
for mode in constrained generate; do
  row=smollm2_fsa_zeroshot_$mode
  folder=$(done_val "$row" 42)
  if [ -n "$folder" ]; then say "skip  $row (done: $folder)"; continue; fi
  step "$row" "$PYTHON" -m finlight validate --config "$CONFIG" --experiment "$row" \
    --model.init_args.evaluation "$mode" "${COMMON[@]}"
done

for seed in "${SEED_LIST[@]}"; do
  ORDER_ARGS=()
  [ "$ORDER" = seed ] && ORDER_ARGS=(--data.init_args.order_seed "$seed")
  ckpt=$(fit_ckpt "$seed")
  if [ -n "$ckpt" ]; then
    say "skip  fit seed $seed (done: $ckpt)"
  else
    step "fit.seed$seed" "$PYTHON" -m finlight fit --config "$CONFIG" --seed_everything "$seed" \
      --data.init_args.train_subsample "$SUBSAMPLE_ARG" "${ORDER_ARGS[@]}" --trainer.limit_val_batches 0 \
      --trainer.num_sanity_val_steps 0 "${QUANT_ARGS[@]}" "${COMMON[@]}"
    ckpt=$(fit_ckpt "$seed")
    if [ -z "$ckpt" ]; then
      [ "${DRY_RUN:-0}" = 1 ] || { say "FAIL  fit seed $seed left no last.ckpt"; FAILED=1; }
      continue
    fi
  fi
  for mode in constrained generate; do
    row=${STEM}_val_$mode
    folder=$(done_val "$row" "$seed")
    if [ -n "$folder" ] && [ "$folder/val_metrics.json" -nt "$ckpt" ] && grep -q "\"$ckpt\"" "$folder/val_metrics.json"; then
      say "skip  $row seed $seed (done: $folder)"; continue
    fi
    step "$row.seed$seed" "$PYTHON" -m finlight validate --config "$CONFIG" --experiment "$row" \
      --seed_everything "$seed" --ckpt_path "$ckpt" --model.init_args.evaluation "$mode" "${QUANT_ARGS[@]}" \
      "${COMMON[@]}"
  done
done
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "would run: $PYTHON reports/smollm2_fsa/collect.py (results.md, results.csv, paired.csv in $REPORT_DIR)"
elif mkdir -p "$REPORT_DIR" && "$PYTHON" reports/smollm2_fsa/collect.py > "$WORK/collect.out" 2>&1; then
  say "results: $REPORT_DIR/results.md"
else
  say "FAIL  collect; see $WORK/collect.out"
  FAILED=1
fi
say "study end (failed: $FAILED)"
[ "$FAILED" = 0 ]
