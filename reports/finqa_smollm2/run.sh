#!/usr/bin/env bash
# Issue 18, study 4: FinQA zero-shot with a real LLM (SmolLM2-135M-Instruct) through configs/finqa_eval.yaml (CPU).
#
#   bash reports/finqa_smollm2/run.sh          # from anywhere; it runs in the repository root
#
# One row: the untuned instruct model asked for a FinQA program (data.target program), greedy decoding of at most
# 64 new tokens, context cut to CONTEXT tokens (table first), scored by executing the program: test/exec_acc,
# test/prog_acc (+ symbolic), test/unparseable_rate, test/nonexecutable_rate, generation tokens/s. The scored file is
# the FinQA dev subset (../shared/data/finqa/dev_200.json) passed as data.test_path, so `test` writes
# test_generations.jsonl (question by question); a seeded random sample of EVAL_SUBSAMPLE of its 200 questions
# (data.eval_subsample, seed 42) when the CPU cannot afford all of them.
#
# Resumable: done when logs/finqa_smollm2_dev/version_N/test_metrics.json exists, newer than the config, written with
# the same subsample and context (read back from its config.yaml). Console: logs/finqa_smollm2/test.out; one line per
# step in logs/finqa_smollm2/progress.log.
#
# Environment: PYTHON (default .venv/bin/python), EVAL_SUBSAMPLE (default 40; "all" for the 200), CONTEXT (default
# 2048, the config's), DRY_RUN=1 (say what is done and what would run).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
EVAL_SUBSAMPLE=${EVAL_SUBSAMPLE:-40}
CONTEXT=${CONTEXT:-2048}
CONFIG=configs/finqa_eval.yaml
ROW=finqa_smollm2_dev
WORK=logs/finqa_smollm2
PROGRESS=$WORK/progress.log
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null
SUB_ARGS=()
[ "$EVAL_SUBSAMPLE" = all ] || SUB_ARGS=(--data.init_args.eval_subsample "$EVAL_SUBSAMPLE")

done_folder() {  # newest finished run with these settings, or nothing
  local found="" want_sub=$EVAL_SUBSAMPLE
  [ "$want_sub" = all ] && want_sub=null
  for folder in logs/$ROW/version_*; do
    [ -f "$folder/test_metrics.json" ] && [ "$folder/test_metrics.json" -nt "$CONFIG" ] || continue
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

folder=$(done_folder)
if [ -n "$folder" ]; then
  say "skip  $ROW (done: $folder)"
  exit 0
fi
CMD=("$PYTHON" -m finlight test --config "$CONFIG" --experiment "$ROW"
     --model.init_args.backbone smollm2-135m-instruct --model.init_args.dtype float32
     --trainer.accelerator cpu --trainer.precision bf16-mixed --trainer.enable_progress_bar false
     --data.init_args.test_path ../shared/data/finqa/dev_200.json --data.init_args.context_tokens "$CONTEXT"
     "${SUB_ARGS[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then echo "would run: ${CMD[*]}"; exit 0; fi
say "start $ROW (subsample $EVAL_SUBSAMPLE, context $CONTEXT) → $WORK/test.out"
start=$SECONDS
if "${CMD[@]}" > "$WORK/test.out" 2>&1; then
  say "done  $ROW in $((SECONDS - start)) s: $(done_folder)"
else
  say "FAIL  $ROW after $((SECONDS - start)) s; see $WORK/test.out"
  exit 1
fi
