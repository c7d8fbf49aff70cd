#!/usr/bin/env bash
# Study 1 of issue 17: fine-tuning baselines on Financial PhraseBank AllAgree (80/10/10 split, data.seed 42),
# training seeds 1 2 3, every model scored on the same 226 test sentences; then `finlight report` against MiniLM.
#
#   bash reports/finetune_baselines/run.sh          # from anywhere; it runs in the repository root
#
# Rows (group name = config name = logs/<name>/):
#   minilm_phrasebank                    all-MiniLM-L6-v2 fine-tuned (the baseline)
#   bert_tiny_splade_phrasebank          pretrained bert-tiny-shaped encoder (4.4 M) fine-tuned
#   bert_tiny_phrasebank_baseline        the same shape trained from scratch (own WordPiece tokenizer)
#   minilm_phrasebank_gradual_unfreeze   MiniLM with FinBERT's gradual unfreezing + discriminative lrs
#   tfidf_phrasebank                     TF-IDF + logistic regression (C on validation), `finlight tfidf`
#
# Resumable: a (config, seed) counts as done when a folder logs/<config>/version_N/ holds a finished test of it
# (test_metrics.json with the tested checkpoint recorded, config.yaml with that seed_everything) written after the
# config file was last changed; done ones are skipped, so a rerun continues where it stopped (an edited config
# reruns its seeds). Each (config, seed) is one `finlight seeds` (fit, then test of the best val/macro_f1
# checkpoint) whose console output goes to logs/finetune_baselines/<config>.seed<N>.out; one line per step goes
# to logs/finetune_baselines/progress.log. The report (report.md, runs.csv, groups.csv, paired.csv,
# val_curves.png) is written here only when every run exists, from exactly those run folders (the newest per seed).
#
# Environment: PYTHON (default .venv/bin/python, else python), SEEDS (default "1 2 3"), DRY_RUN=1 (say what is done
# and what would run, run nothing).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
OUT=reports/finetune_baselines
WORK=logs/finetune_baselines
PROGRESS=$WORK/progress.log
BASELINE=minilm_phrasebank
NEURAL=(minilm_phrasebank bert_tiny_splade_phrasebank bert_tiny_phrasebank_baseline minilm_phrasebank_gradual_unfreeze)
TFIDF=tfidf_phrasebank
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null


# The newest finished run folder of config $1 with seed $2, or nothing (reports/done_run.py).
done_run() { "$PYTHON" reports/done_run.py "$1" "$1" any "$2"; }

run_one() {  # config, seed, command…
  local stem=$1 seed=$2
  shift 2
  local folder
  folder=$(done_run "$stem" "$seed")
  if [ -n "$folder" ]; then
    say "skip  $stem seed $seed (done: $folder)"
    return 0
  fi
  local out="$WORK/$stem.seed$seed.out"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would run: $*"
    return 0
  fi
  say "start $stem seed $seed → $out"
  local start=$SECONDS
  if "$@" > "$out" 2>&1; then
    say "done  $stem seed $seed in $((SECONDS - start)) s: $(done_run "$stem" "$seed")"
  else
    say "FAIL  $stem seed $seed after $((SECONDS - start)) s (exit $?); see $out"
    FAILED=1
  fi
}

FAILED=0
say "study start: seeds ${SEED_LIST[*]}, python $PYTHON"
for stem in "${NEURAL[@]}"; do
  for seed in "${SEED_LIST[@]}"; do
    run_one "$stem" "$seed" "$PYTHON" -m finlight seeds --config "configs/$stem.yaml" --seeds "$seed" \
      --report_dir "$WORK/seeds_$stem" --trainer.enable_progress_bar false
  done
done
for seed in "${SEED_LIST[@]}"; do
  run_one "$TFIDF" "$seed" "$PYTHON" -m finlight tfidf --config "configs/$TFIDF.yaml" --seed "$seed"
done

RUNS=()
MISSING=()
for stem in "${NEURAL[@]}" "$TFIDF"; do
  for seed in "${SEED_LIST[@]}"; do
    folder=$(done_run "$stem" "$seed")
    if [ -n "$folder" ]; then RUNS+=("$folder"); else MISSING+=("$stem/seed$seed"); fi
  done
done
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "would run: $PYTHON -m finlight report ${RUNS[*]} [+ the runs of: ${MISSING[*]}] --baseline $BASELINE --output_dir $OUT"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi
say "report of ${#RUNS[@]} runs against $BASELINE → $OUT/report.md"
if "$PYTHON" -m finlight report "${RUNS[@]}" --baseline "$BASELINE" --output_dir "$OUT" > "$WORK/report.out" 2>&1; then
  say "study done: $OUT/report.md"
else
  say "FAIL  report; see $WORK/report.out"
  exit 1
fi
[ "$FAILED" = 0 ]
