#!/usr/bin/env bash
# Issue 18, study 4: FinQA with a real LLM (SmolLM2-135M-Instruct) on CPU, before and after LoRA.
#
#   bash reports/finqa_smollm2/run.sh          # from anywhere; it runs in the repository root
#
# Rows (each scored by executing the generated program: exec_acc, prog_acc (+ symbolic), unparseable_rate,
# nonexecutable_rate, generation tokens/s; question by question in test_generations.jsonl):
#   finqa_smollm2_dev       the untuned instruct model on a seeded sample of EVAL_SUBSAMPLE dev questions
#                           (configs/finqa_eval.yaml; dev_200.json passed as data.test_path, so metrics are test/*).
#   finqa_smollm2_zeroshot  the untuned model on the test sample of configs/finqa_smollm2_lora.yaml (32 seeded
#                           questions of test_500_simplified.json): the "before" row of the paired comparison.
#   finqa_smollm2_lora      LoRA on the 100 train questions (configs/finqa_smollm2_lora.yaml, 3 epochs), one
#                           `finlight seeds --select best` per seed in SEEDS: val/exec_acc on 32 dev questions picks
#                           the epoch, the test sample is decoded once.
#   finqa_smollm2_lora_last the same fits' last checkpoint (after epoch 3), tested once: the recipe without selection.
# Then collect.py: results.md / results.csv / paired.csv here (McNemar on per-question execution correctness,
# each seed against zero-shot and seed against seed).
#
# Resumable: a row is done when logs/<row>/version_N/test_metrics.json exists, newer than its config, with the same
# subsample and context (the dev row) or seed (the LoRA rows). Console: logs/finqa_smollm2/<step>.out; one line per
# step in logs/finqa_smollm2/progress.log.
#
# Environment: PYTHON (default .venv/bin/python), SEEDS (default "1 2"; "" = the zero-shot rows only),
# EVAL_SUBSAMPLE (dev row, default 32, the LoRA runs' validation sample; "all" for the 200), CONTEXT (dev row, default 2048), DRY_RUN=1.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, step, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS-1 2}"
EVAL_SUBSAMPLE=${EVAL_SUBSAMPLE:-32}
CONTEXT=${CONTEXT:-2048}
EVAL_CONFIG=configs/finqa_eval.yaml
LORA=finqa_smollm2_lora
WORK=logs/finqa_smollm2
PROGRESS=$WORK/progress.log
mkdir -p "$WORK"
DRY=${DRY_RUN:-0}
[ "$DRY" = 1 ] && PROGRESS=/dev/null
COMMON=(--trainer.enable_progress_bar false)
FAILED=0

dev_done() {  # newest finished dev row with this subsample and context, or nothing
  local found="" want_sub=$EVAL_SUBSAMPLE
  [ "$want_sub" = all ] && want_sub=null
  for folder in logs/finqa_smollm2_dev/version_*; do
    [ -f "$folder/test_metrics.json" ] && [ "$folder/test_metrics.json" -nt "$EVAL_CONFIG" ] || continue
    "$PYTHON" - "$folder/config.yaml" "$want_sub" "$CONTEXT" <<'PY' || continue
import sys, yaml
args = yaml.safe_load(open(sys.argv[1]))["data"]["init_args"]
want = None if sys.argv[2] == "null" else int(sys.argv[2])
sys.exit(0 if args.get("eval_subsample") == want and args.get("context_tokens") == int(sys.argv[3]) else 1)
PY
    found=$folder
  done
  echo "$found"
}

zeroshot_done() {  # newest zero-shot test of the LoRA config written after the config last changed, or nothing
  local found=""
  for folder in logs/finqa_smollm2_zeroshot/version_*; do
    [ -f "$folder/test_metrics.json" ] && [ "$folder/test_metrics.json" -nt "configs/$LORA.yaml" ] && found=$folder
  done
  echo "$found"
}

say "study start: seeds ${SEED_LIST[*]}, dev subsample $EVAL_SUBSAMPLE, context $CONTEXT, python $PYTHON, cpu: $(lscpu | grep -o 'avx512_bf16\|avx512_vnni\|amx_bf16\|avx2' | sort -u | tr '\n' ' ')"

# --- zero-shot on dev (configs/finqa_eval.yaml)
SUB_ARGS=()
[ "$EVAL_SUBSAMPLE" = all ] || SUB_ARGS=(--data.init_args.eval_subsample "$EVAL_SUBSAMPLE")
folder=$(dev_done)
if [ -n "$folder" ]; then
  say "skip  finqa_smollm2_dev (done: $folder)"
else
  step finqa_smollm2_dev "$PYTHON" -m finlight test --config "$EVAL_CONFIG" --experiment finqa_smollm2_dev \
    --model.init_args.backbone smollm2-135m-instruct --model.init_args.dtype float32 \
    --trainer.accelerator cpu --trainer.precision bf16-mixed \
    --data.init_args.test_path ../shared/data/finqa/dev_200.json --data.init_args.context_tokens "$CONTEXT" \
    "${SUB_ARGS[@]}" "${COMMON[@]}"
fi

# --- zero-shot on the test sample, the paired "before" row
folder=$(zeroshot_done)
if [ -n "$folder" ]; then
  say "skip  finqa_smollm2_zeroshot (done: $folder)"
else
  step finqa_smollm2_zeroshot "$PYTHON" -m finlight test --config "configs/$LORA.yaml" \
    --experiment finqa_smollm2_zeroshot "${COMMON[@]}"
fi

# --- LoRA, seed by seed
for seed in "${SEED_LIST[@]}"; do
  folder=$("$PYTHON" reports/done_run.py "$LORA" "$LORA" best "$seed")
  if [ -n "$folder" ]; then say "skip  $LORA seed $seed (done: $folder)"; continue; fi
  step "$LORA.seed$seed" "$PYTHON" -m finlight seeds --config "configs/$LORA.yaml" --seeds "$seed" --select best \
    --experiment "$LORA" --report_dir "$WORK/seeds_$LORA" "${COMMON[@]}" || break
done

# --- the same fits' final (epoch-3) checkpoints, tested once each: the fixed recipe without selection (declared
# before any test was read, when every validation so far tied at exec_acc 0, where val/exec_acc cannot choose)
for seed in "${SEED_LIST[@]}"; do
  folder=$("$PYTHON" reports/done_run.py "$LORA" "$LORA" best "$seed")
  [ -n "$folder" ] || continue
  last="$(dirname "$(tested_checkpoint "$folder")")/last.ckpt"
  [ -f "$last" ] || { say "FAIL  no $last for seed $seed"; FAILED=1; continue; }
  if grep -qsF "\"checkpoint\": \"$last\"" logs/${LORA}_last/version_*/test_metrics.json; then
    say "skip  ${LORA}_last seed $seed (done: $last tested)"; continue
  fi
  step "${LORA}_last.seed$seed" "$PYTHON" -m finlight test --config "configs/$LORA.yaml" --ckpt_path "$last" \
    --experiment "${LORA}_last" --seed_everything "$seed" "${COMMON[@]}"
done

# --- results and paired tests
if [ "$DRY" = 1 ]; then
  echo "would run: $PYTHON reports/finqa_smollm2/collect.py (results.md, results.csv, paired.csv)"
elif "$PYTHON" reports/finqa_smollm2/collect.py > "$WORK/collect.out" 2>&1; then
  say "results: reports/finqa_smollm2/results.md"
else
  say "FAIL  collect; see $WORK/collect.out"
  FAILED=1
fi
say "study end (failed: $FAILED)"
[ "$FAILED" = 0 ]
