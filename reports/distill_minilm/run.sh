#!/usr/bin/env bash
# Study 2 of issue 17: distillation on real pretrained encoders. Teacher = study 1's fine-tuned all-MiniLM-L6-v2 with
# the best VALIDATION macro-F1 (logs/minilm_phrasebank_fp32/version_2); it pseudo-labels 25,000 sentences sampled from
# the ECTSum train transcripts; students learn from them (stage 1), then get one epoch on PhraseBank AllAgree
# (stage 2, identical settings for every row); "fresh" rows get only the stage-2 epoch. Seeds 1 2 3 per row, then
# `finlight report` against the fresh bert-tiny student with KL(teacher ‖ student) on the test split.
#
#   bash reports/distill_minilm/run.sh          # from anywhere; it runs in the repository root
#
# Rows (config = configs/<row>.yaml; stage-1 runs in logs/<row>/, stage-2 runs in logs/<row>_stage2/):
#   distill_minilm_tiny_{ce,kd_t2,kd_t5,kd_t9,pkd}   bert-tiny-splade (4.4 M), stage 1 with CE / KD T=2,5,9 / PKD
#   distill_minilm_cut3_kd                           the teacher cut to its layers 0, 2, 4, KD at T = 2 (chosen on the
#                                                    bert-tiny rows' validation scores)
#   distill_minilm_tiny_fresh, distill_minilm_cut3_fresh   no stage 1 (the baseline is distill_minilm_tiny_fresh)
# References in the report (no training here): the teacher run and study 1's 8-epoch bert-tiny-splade runs.
#
# Resumable: the pseudo-label file resumes by itself (its .progress.json); a (row, stage, seed) counts as done when a
# folder logs/<experiment>/version_N/ holds a finished test of it with that seed, written after the config last
# changed (reports/done_run.py); done ones are skipped. Console output: logs/distill_minilm/<experiment>.seed<N>.out;
# one line per step: logs/distill_minilm/progress.log. The report is written only when every run exists.
#
# Environment: PYTHON (default .venv/bin/python), SEEDS (default "1 2 3"), ONLY="row row" (run only these rows; the
# report waits for all), DRY_RUN=1 (say what is done and what would run, run nothing).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
OUT=reports/distill_minilm
WORK=logs/distill_minilm
PROGRESS=$WORK/progress.log
TEACHER_RUN=logs/minilm_phrasebank_fp32/version_2
TEACHER_CKPT=checkpoints/minilm_phrasebank_fp32/version_2/epoch03-val_macro_f10.9472.ckpt
TEACHER_HF=$WORK/teacher_hf
PSEUDO=$WORK/minilm_ect_train_25k.jsonl
BASELINE=distill_minilm_tiny_fresh
TWO_STAGE=(distill_minilm_tiny_ce distill_minilm_tiny_kd_t2 distill_minilm_tiny_kd_t5 distill_minilm_tiny_kd_t9
           distill_minilm_tiny_pkd distill_minilm_cut3_kd)
FRESH=(distill_minilm_tiny_fresh distill_minilm_cut3_fresh)
REFERENCE=bert_tiny_splade_phrasebank  # study 1 (8 epochs): its runs are read, not trained here
STAGE2=(--trainer.max_epochs 1 --model.init_args.loss ce --model.init_args.teacher null
        --data.init_args.pseudo_label_path null)
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null

wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
done_run() { "$PYTHON" reports/done_run.py "$1" "$2" any "$3"; }  # experiment, config stem, seed
selected_ckpt() { "$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['selected']['path'])" "$1/test_metrics.json"; }

FAILED=0
run() {  # label, log file, command…
  local label=$1 out=$2
  shift 2
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would run: $*"
    return 0
  fi
  say "start $label → $out"
  local start=$SECONDS
  if "$@" > "$out" 2>&1; then
    say "done  $label in $((SECONDS - start)) s"
  else
    say "FAIL  $label after $((SECONDS - start)) s; see $out"
    FAILED=1
    return 1
  fi
}

# every seed of experiment $1 (config $2) without a finished run
missing_seeds() {
  local seed list=()
  for seed in "${SEED_LIST[@]}"; do [ -z "$(done_run "$1" "$2" "$seed")" ] && list+=("$seed"); done
  echo "${list[*]}"
}

say "study start: seeds ${SEED_LIST[*]}, python $PYTHON, cpu: $(lscpu | grep -o 'avx512_bf16\|avx512_vnni\|amx_bf16\|avx2' | sort -u | tr '\n' ' ')"

# 1. pseudo-labels (resumes, or says it is complete) and the teacher as a Hugging Face directory (for the cut student)
run "pseudo-label" "$WORK/pseudo_label.out" "$PYTHON" -m finlight pseudo-label --teacher "$TEACHER_CKPT" \
  --input "../shared/data/ect/train/ects/*.txt" --output "$PSEUDO" --sample 25000 --sample_seed 0 \
  --max_length 64 --batch_size 64 --no_progress_bar || exit 1
if [ ! -f "$TEACHER_HF/config.json" ]; then
  run "export teacher" "$WORK/export_teacher.out" "$PYTHON" -m finlight export --ckpt_path "$TEACHER_CKPT" \
    --output_dir "$TEACHER_HF" || exit 1
fi

# 2. two-stage rows: stage 1 for every missing seed in one process, then stage 2 per seed from that seed's checkpoint
for row in "${TWO_STAGE[@]}"; do
  wanted "$row" || continue
  seeds=$(missing_seeds "$row" "$row")
  if [ -n "$seeds" ]; then
    # shellcheck disable=SC2086
    run "$row stage 1 seeds $seeds" "$WORK/$row.stage1.out" "$PYTHON" -m finlight seeds --config "configs/$row.yaml" \
      --seeds $seeds --report_dir "$WORK/seeds_$row" --trainer.enable_progress_bar false || continue
  else
    say "skip  $row stage 1 (done)"
  fi
  for seed in "${SEED_LIST[@]}"; do
    if [ -n "$(done_run "${row}_stage2" "$row" "$seed")" ]; then
      say "skip  ${row}_stage2 seed $seed (done)"
      continue
    fi
    first=$(done_run "$row" "$row" "$seed")
    if [ -z "$first" ]; then
      [ "${DRY_RUN:-0}" = 1 ] && echo "would run: stage 2 of $row seed $seed from its stage-1 checkpoint" && continue
      say "FAIL  ${row}_stage2 seed $seed: no stage-1 run"; FAILED=1; continue
    fi
    run "${row}_stage2 seed $seed" "$WORK/${row}_stage2.seed$seed.out" "$PYTHON" -m finlight seeds \
      --config "configs/$row.yaml" --seeds "$seed" --experiment "${row}_stage2" --report_dir "$WORK/seeds_${row}_stage2" \
      "${STAGE2[@]}" --model.init_args.init_from "$(selected_ckpt "$first")" --trainer.enable_progress_bar false
  done
done

# 3. fresh rows: the stage-2 epoch alone
for row in "${FRESH[@]}"; do
  wanted "$row" || continue
  seeds=$(missing_seeds "$row" "$row")
  if [ -z "$seeds" ]; then say "skip  $row (done)"; continue; fi
  # shellcheck disable=SC2086
  run "$row seeds $seeds" "$WORK/$row.out" "$PYTHON" -m finlight seeds --config "configs/$row.yaml" --seeds $seeds \
    --report_dir "$WORK/seeds_$row" --trainer.enable_progress_bar false
done

# 4. the teacher's speed, timed like the students' (fp32 eager, same test texts): a re-test of its checkpoint with the
#    LatencyProfiler and its own precision (32-true): same predictions; report counts the two tests once
if [ ! -f "$WORK/teacher_latency.done" ] && wanted teacher; then
  run "teacher latency" "$WORK/teacher_latency.out" "$PYTHON" -m finlight test --config configs/minilm_phrasebank.yaml \
    --experiment minilm_phrasebank_fp32 --trainer.precision 32-true --ckpt_path "$TEACHER_CKPT" \
    --trainer.callbacks+=finlight.core.callbacks.LatencyProfiler --trainer.callbacks.batch_sizes "[1, 32]" \
    --trainer.callbacks.warmup 3 --trainer.callbacks.iterations 20 --trainer.enable_progress_bar false \
    && [ "${DRY_RUN:-0}" != 1 ] && touch "$WORK/teacher_latency.done"
fi

# 5. the reports: final (stage 2 + fresh + references) against the fresh bert-tiny student, the same runs against study
#    1's 8-epoch fine-tuned bert-tiny-splade (vs_finetuned/), and stage 1 alone (students tested before their
#    PhraseBank epoch; stage1/)
FINAL=() STAGE1=() MISSING=()
add() {  # array name, experiment, config stem
  local seed folder
  for seed in "${SEED_LIST[@]}"; do
    folder=$(done_run "$2" "$3" "$seed")
    if [ -n "$folder" ]; then eval "$1+=(\"\$folder\")"; else MISSING+=("$2/seed$seed"); fi
  done
}
for row in "${FRESH[@]}"; do add FINAL "$row" "$row"; done
for row in "${TWO_STAGE[@]}"; do add FINAL "${row}_stage2" "$row"; add STAGE1 "$row" "$row"; done
add FINAL "$REFERENCE" "$REFERENCE"
TEACHER_TESTS=$(ls -d logs/minilm_phrasebank_fp32/version_* 2>/dev/null | while read -r f; do
  [ -f "$f/test_metrics.json" ] && grep -q "version_2/epoch03" "$f/test_metrics.json" && echo "$f"; done)
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "would run: $PYTHON -m finlight report <${#FINAL[@]} runs> $TEACHER_TESTS [+ missing: ${MISSING[*]}] --baseline $BASELINE --teacher $TEACHER_RUN --output_dir $OUT"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi
# shellcheck disable=SC2086
run "report → $OUT/report.md" "$WORK/report.out" "$PYTHON" -m finlight report "${FINAL[@]}" $TEACHER_TESTS \
  --baseline "$BASELINE" --teacher "$TEACHER_RUN" --output_dir "$OUT" || exit 1
run "report vs fine-tuning → $OUT/vs_finetuned/report.md" "$WORK/report_vs_finetuned.out" "$PYTHON" -m finlight report \
  "${FINAL[@]}" $TEACHER_TESTS --baseline "$REFERENCE" --teacher "$TEACHER_RUN" --output_dir "$OUT/vs_finetuned" || exit 1
run "stage-1 report → $OUT/stage1/report.md" "$WORK/report_stage1.out" "$PYTHON" -m finlight report "${STAGE1[@]}" \
  --baseline distill_minilm_tiny_ce --teacher "$TEACHER_RUN" --output_dir "$OUT/stage1" || exit 1
say "study done: $OUT/report.md"
[ "$FAILED" = 0 ]
