#!/usr/bin/env bash
# Issue 18, study 3: layer dropping vs post-training quantization on a real decoder, SmolLM2-135M-Instruct (30 layers
# × 576, Llama architecture) as a label-word classifier on Financial PhraseBank AllAgree (80/10/10, data.seed 42,
# max_length 128, a stratified 640-prompt training subsample, validation and test whole), on this CPU.
#
#   bash reports/smollm2_compression/run.sh          # from anywhere; it runs in the repository root
#   DRY_RUN=1 bash reports/smollm2_compression/run.sh   # what is done, what would run
#
# Rows (group name = experiment = logs/<name>/), training seed 1 (SEEDS to change; one seed fits this CPU budget):
#   smollm2_pb_lora     configs/smollm2_phrasebank_labelword_lora.yaml: LoRA r 16 on the 7 projections, one epoch of
#                       the 640 prompts — the "ceiling" (the seed's QLoRA baseline; its 4-bit forms are measured after
#                       training: see the config); tested at its best val/macro_f1 checkpoint
#   smollm2_pb_sapling  configs/smollm2_phrasebank_sapling.yaml: full fine-tuning, 3 layers of lowest block influence
#                       dropped at the start of epochs 1–5, 30 → 15 (7 epochs of 64 prompts); --select final_depth
#   smollm2_pb_trimllm  configs/smollm2_phrasebank_trimllm.yaml: full fine-tuning, attention / MLP parts dropped by
#                       ablation (7 per drop) down to the parameter count of 15 layers; --select final_depth
#   smollm2_pb_sapling_from_lora, smollm2_pb_trimllm_from_lora
#                       the same two recipes started from the fine-tuned ceiling (the LoRA run's tested checkpoint,
#                       merged: --model.init_args.backbone logs/smollm2_compression/export_lora_merged) instead of
#                       the untuned instruct model: prune the classifier you have, the seed's setting.
#                       Nothing in the four full fine-tuning rows is random but the batch order, so their training
#                       seed N uses data.order_seed 41 + N (42 = data.seed for seed 1); under data.seed's order
#                       every seed was the same run, to the digit (the committed report.md's untuned seeds 2 and 3;
#                       untuned_order_seeds/ has them re-run with order seeds)
#   smollm2_pb_sapling_from_lora_18of30
#                       test only: each seed's smollm2_pb_sapling_from_lora fit at 18 layers, its best val/macro_f1
#                       checkpoint among those at that depth (finlight.prune.checkpoint_selection.select_in_run; the
#                       choice is recorded under "selected" in test_metrics.json): the point before the last drop
# Then `finlight report` of the runs against smollm2_pb_lora (report.md, runs.csv, groups.csv, paired.csv,
# val_curves.png here; paired McNemar + bootstrap on the test predictions), the LoRA run's tested checkpoint exported
# merged (logs/smollm2_compression/export_lora_merged), and benchmarks/compression_report.py on the test split, CPU,
# 2 threads, each variant in a fresh process: the untuned model (zero-shot), the merged LoRA model and its dynamic
# INT8 / bitsandbytes 8-bit / bitsandbytes 4-bit (NF4) / GPTQ 4-bit forms, the 15-layer model of the SAPLING
# run (sapling_15of30: its best val/macro_f1 checkpoint at 15 layers, the one `seeds` tested) and that model in
# GPTQ 4-bit (GPTQ of a pruned model), and the TrimLLM model → compression/ here (report.md, report.csv,
# results.json, pareto.png). Accuracy is constrained scoring of the label words; scoring_tokens_per_s = prompt
# scoring; gen_tokens_per_s = greedy decoding of 16 new tokens for 32 test prompts, 8 at a time. The *_from_lora
# models (SAPLING at 18 and at 15 layers, TrimLLM; first seed) are measured the same way beside the merged LoRA
# model → compression_from_lora/ here. Stage ptq: the ceiling of each of PTQ_SEEDS (default: the seeds after the
# first) merged and measured with its dynamic INT8 / bnb 8-bit / bnb 4-bit forms → compression_seed<N>/ here
# (accuracy across seeds; GPTQ only in the first seed's table).
#
# GPTQ needs gptqmodel 7.6.0 + optimum 2.3.0, which pin numpy 2.2.6: they live in an overlay venv (GPTQ_PYTHON,
# default /tmp/s18c_gptq_venv/bin/python: a venv whose .pth adds .venv's site-packages) so .venv is unchanged; made by
#   python3.11 -m venv /tmp/s18c_gptq_venv
#   echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
#       > /tmp/s18c_gptq_venv/lib/python3.11/site-packages/zz_finlight_venv.pth
#   /tmp/s18c_gptq_venv/bin/python -m pip install -c constraints.txt gptqmodel==7.6.0 optimum==2.3.0
# Without it the compression table runs with PYTHON and lists the GPTQ rows with their import error.
#
# Resumable: a (row, seed) counts as done when logs/<row>/version_N/ holds a finished test of it written after the
# row's config last changed (reports/done_run.py); done ones are skipped. The export is skipped while it is newer
# than its checkpoint; the compression table is not measured again while compression/results.json is newer than
# every checkpoint it reads (FORCE_COMPRESSION=1 measures again). One line per step in logs/smollm2_compression/
# progress.log. Environment: PYTHON (default .venv/bin/python), SEEDS (default "1"), STAGES (default
# "train depth report compression"; also "ptq"), ROWS_ONLY (train and report only these rows), REPORT_DIR (default
# here), PTQ_SEEDS, DRY_RUN=1. The untuned rows re-run with order seeds (untuned_order_seeds/):
#   SEEDS="2 3" ROWS_ONLY="smollm2_pb_lora smollm2_pb_sapling smollm2_pb_trimllm" STAGES="train report ptq" \
#       REPORT_DIR=reports/smollm2_compression/untuned_order_seeds bash reports/smollm2_compression/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
export GPTQMODEL_TORCH_EXTENSIONS_DIR=${GPTQMODEL_TORCH_EXTENSIONS_DIR:-/tmp/s18c_gptq_ext} GPTQMODEL_CPU_WORKERS=2
GPTQ_PYTHON=${GPTQ_PYTHON:-/tmp/s18c_gptq_venv/bin/python}
read -r -a SEED_LIST <<< "${SEEDS:-1}"
STAGES=${STAGES:-train depth report compression}
OUT=reports/smollm2_compression
REPORT_DIR=${REPORT_DIR:-$OUT}
read -r -a PTQ_SEED_LIST <<< "${PTQ_SEEDS:-${SEED_LIST[*]:1}}"
WORK=logs/smollm2_compression
PROGRESS=$WORK/progress.log
BASELINE=smollm2_pb_lora
EXPORT=$WORK/export_lora_merged
DEPTH_ROW=smollm2_pb_sapling_from_lora_18of30
DEPTH_LAYERS=18
ROWS=(  # row|config|select|start ("lora": the merged ceiling)|"order": training seed N → data.order_seed 41 + N
  "smollm2_pb_lora|smollm2_phrasebank_labelword_lora|best||"
  "smollm2_pb_sapling|smollm2_phrasebank_sapling|final_depth||order"
  "smollm2_pb_trimllm|smollm2_phrasebank_trimllm|final_depth||order"
  "smollm2_pb_sapling_from_lora|smollm2_phrasebank_sapling|final_depth|lora|order"
  "smollm2_pb_trimllm_from_lora|smollm2_phrasebank_trimllm|final_depth|lora|order"
)
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null

done_run() { "$PYTHON" reports/done_run.py "$1" "$2" "$3" "$4"; }
stage() { [[ " $STAGES " == *" $1 "* ]]; }
wanted_row() { [ -z "${ROWS_ONLY:-}" ] || [[ " $ROWS_ONLY " == *" $1 "* ]]; }

# the LoRA ceiling's tested checkpoint of seed $1 (default: the first) merged into a plain model directory at $2
# (default $EXPORT), unless that is newer
ensure_export() {
  local seed=${1:-${SEED_LIST[0]}} export=${2:-$EXPORT} folder lora
  folder=$(done_run smollm2_pb_lora smollm2_phrasebank_labelword_lora best "$seed")
  [ -n "$folder" ] || { say "FAIL  no finished smollm2_pb_lora seed $seed to export"; return 1; }
  lora=$(tested_checkpoint "$folder")
  if [ -f "$export/config.json" ] && [ "$export/config.json" -nt "$lora" ]; then
    say "skip  export ($export is newer than $lora)"
    return 0
  fi
  rm -rf "$export"
  say "export $lora (merged) → $export"
  "$PYTHON" -m finlight export --ckpt_path "$lora" --output_dir "$export" --merged > "$WORK/export_seed$seed.out" 2>&1 ||
    { say "FAIL  export; see $WORK/export_seed$seed.out"; return 1; }
}

run_one() {  # row, config, select, seed, start ("lora": from the merged ceiling), "order" (vary the batch order)
  local row=$1 stem=$2 how=$3 seed=$4 start_from=${5:-} order=${6:-} folder
  folder=$(done_run "$row" "$stem" "$how" "$seed")
  if [ -n "$folder" ]; then
    say "skip  $row seed $seed (done: $folder)"
    return 0
  fi
  local command=("$PYTHON" -m finlight seeds --config "configs/$stem.yaml" --seeds "$seed" --select "$how"
                 --experiment "$row" --report_dir "$WORK/seeds_$row" --trainer.enable_progress_bar false)
  # full fine-tuning with dropout 0 and no new weights: only the batch order can differ between seeds (seed 1
  # keeps data.seed's order, 42, as its first run had)
  [ "$order" = order ] && command+=(--data.init_args.order_seed "$((41 + seed))")
  if [ "$start_from" = lora ]; then
    command+=(--model.init_args.backbone "$EXPORT")
    [ "${DRY_RUN:-0}" = 1 ] || ensure_export || { FAILED=1; return 1; }
  fi
  local out="$WORK/$row.seed$seed.out"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would run: ${command[*]}"
    return 0
  fi
  say "start $row seed $seed → $out"
  local start=$SECONDS
  if "${command[@]}" > "$out" 2>&1; then
    say "done  $row seed $seed in $((SECONDS - start)) s: $(done_run "$row" "$stem" "$how" "$seed")"
  else
    say "FAIL  $row seed $seed after $((SECONDS - start)) s (exit $?); see $out"
    FAILED=1
  fi
}

FAILED=0
say "study start: seeds ${SEED_LIST[*]}, stages $STAGES, python $PYTHON"
if stage train; then
  for spec in "${ROWS[@]}"; do
    IFS='|' read -r row stem how start_from order <<< "$spec"
    wanted_row "$row" || continue
    for seed in "${SEED_LIST[@]}"; do
      run_one "$row" "$stem" "$how" "$seed" "$start_from" "$order"
    done
  done
fi

# the test folder of checkpoint $1 under $DEPTH_ROW, or nothing
depth_test_of() {
  local f
  for f in logs/"$DEPTH_ROW"/version_*/test_metrics.json; do
    [ -f "$f" ] && grep -qF "\"checkpoint\": \"$1\"" "$f" && { dirname "$f"; return; }
  done
}

# seed → the 18-layer checkpoint of its smollm2_pb_sapling_from_lora fit, tested under $DEPTH_ROW (once); prints the
# test folder
test_at_depth() {
  local seed=$1 fit selected ckpt folder
  fit=$(done_run smollm2_pb_sapling_from_lora smollm2_phrasebank_sapling final_depth "$seed")
  [ -n "$fit" ] || return 0
  selected=$("$PYTHON" -c 'import json, sys
from finlight.prune.checkpoint_selection import select_in_run
print(json.dumps(select_in_run(sys.argv[1], int(sys.argv[2]), allow_missing=True).record()))' \
    "$(dirname "$(tested_checkpoint "$fit")")" \
    "$DEPTH_LAYERS") || { say "FAIL  no $DEPTH_LAYERS-layer checkpoint of $fit" >&2; FAILED=1; return 0; }
  ckpt=$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["path"])' "$selected")
  folder=$(depth_test_of "$ckpt")
  if [ -n "$folder" ]; then
    say "skip  $DEPTH_ROW seed $seed (done: $folder)" >&2
  elif [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would run: $PYTHON -m finlight test --config configs/smollm2_phrasebank_sapling.yaml --ckpt_path $ckpt" \
      "--experiment $DEPTH_ROW --model.init_args.backbone $EXPORT" >&2
  elif "$PYTHON" -m finlight test --config configs/smollm2_phrasebank_sapling.yaml --ckpt_path "$ckpt" \
      --experiment "$DEPTH_ROW" --model.init_args.backbone "$EXPORT" --trainer.enable_progress_bar false \
      > "$WORK/$DEPTH_ROW.seed$seed.out" 2>&1 && folder=$(depth_test_of "$ckpt") && [ -n "$folder" ]; then
    "$PYTHON" -c 'import json, sys
from finlight.report.seeds import record_selection
record_selection(sys.argv[1], json.loads(sys.argv[2]))' "$folder" "$selected"
    say "done  $DEPTH_ROW seed $seed: $ckpt → $folder" >&2
  else
    say "FAIL  $DEPTH_ROW seed $seed; see $WORK/$DEPTH_ROW.seed$seed.out" >&2
    FAILED=1
  fi
  echo "$folder"
}

RUNS=()
MISSING=()
declare -A FIRST
for spec in "${ROWS[@]}"; do
  IFS='|' read -r row stem how _ <<< "$spec"
  wanted_row "$row" || continue
  for seed in "${SEED_LIST[@]}"; do
    folder=$(done_run "$row" "$stem" "$how" "$seed")
    if [ -n "$folder" ]; then
      RUNS+=("$folder")
      [ "$seed" = "${SEED_LIST[0]}" ] && FIRST[$row]=$folder
    else
      MISSING+=("$row/seed$seed")
    fi
  done
done
if stage depth && wanted_row smollm2_pb_sapling_from_lora; then
  for seed in "${SEED_LIST[@]}"; do
    folder=$(test_at_depth "$seed")
    if [ -n "$folder" ]; then RUNS+=("$folder"); else MISSING+=("$DEPTH_ROW/seed$seed"); fi
  done
fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  stage report && echo "would run: $PYTHON -m finlight report ${RUNS[*]} [+ the runs of: ${MISSING[*]}] --baseline $BASELINE --output_dir $REPORT_DIR"
  stage ptq && echo "would run: $PYTHON benchmarks/compression_report.py … (the ceiling of seeds ${PTQ_SEED_LIST[*]}) --out $OUT/compression_seed<N>"
  stage compression && echo "would run: $PYTHON -m finlight export --ckpt_path <$BASELINE's tested checkpoint> --output_dir $EXPORT --merged" &&
    echo "would run: $GPTQ_PYTHON benchmarks/compression_report.py … (seed ${SEED_LIST[0]}'s checkpoints) --out $OUT/compression" &&
    echo "would run: $PYTHON benchmarks/compression_report.py … (the *_from_lora rows) --out $OUT/compression_from_lora"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report / compression table: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi

# runs tested before causal-LM tests wrote test_predictions.csv get one more `test` of the same checkpoint (the same
# metrics, in a new folder of the row); `finlight report` counts both as one run and pairs on the newer one
retest() {  # run folder, config stem → the folder whose test_predictions.csv the report pairs on
  local folder=$1 stem=$2 row ckpt newest f
  [ -f "$folder/test_predictions.csv" ] && { echo "$folder"; return; }
  row=$(basename "$(dirname "$folder")")
  ckpt=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/test_metrics.json"))["checkpoint"])' "$folder")
  for f in $(ls -d logs/"$row"/version_* | sort -t_ -k3 -rn); do  # newest version first: an earlier retest
    [ -f "$f/test_predictions.csv" ] && grep -qF "\"checkpoint\": \"$ckpt\"" "$f/test_metrics.json" && { echo "$f"; return; }
  done
  if "$PYTHON" -m finlight test --config "configs/$stem.yaml" --ckpt_path "$ckpt" --experiment "$row" \
      --trainer.enable_progress_bar false > "$WORK/retest_$row.out" 2>&1; then
    newest=$(ls -d logs/"$row"/version_* | sort -t_ -k3 -n | tail -n 1)
    say "retested $folder → $newest" >&2
    echo "$newest"
  else
    say "FAIL  retest of $folder; see $WORK/retest_$row.out" >&2
  fi
}

if stage report; then
  PAIRED=()
  for spec in "${ROWS[@]}"; do
    IFS='|' read -r row stem how _ <<< "$spec"
    for folder in "${RUNS[@]}"; do
      [[ $folder == logs/$row/* ]] || continue
      paired=$(retest "$folder" "$stem")
      [ -n "$paired" ] && [ "$paired" != "$folder" ] && PAIRED+=("$paired")
    done
  done
  RUNS+=("${PAIRED[@]}")
  say "report of ${#RUNS[@]} runs against $BASELINE → $REPORT_DIR/report.md"
  if "$PYTHON" -m finlight report "${RUNS[@]}" --baseline "$BASELINE" --output_dir "$REPORT_DIR" \
      > "$WORK/report.out" 2>&1; then
    say "report done: $REPORT_DIR/report.md"
  else
    say "FAIL  report; see $WORK/report.out"
    FAILED=1
  fi
fi

if stage compression; then
  sapling=$(tested_checkpoint "${FIRST[smollm2_pb_sapling]}")
  trimllm=$(tested_checkpoint "${FIRST[smollm2_pb_trimllm]}")
  ensure_export || exit 1
  fresh=1
  for source in "$EXPORT/config.json" "$(dirname "$sapling")"/*.ckpt "$trimllm"; do
    [ "$OUT/compression/results.json" -nt "$source" ] || fresh=0
  done
  if [ "$fresh" = 1 ] && [ "${FORCE_COMPRESSION:-0}" != 1 ]; then
    say "skip  compression table ($OUT/compression/results.json is newer than its checkpoints)"
  else
    python_for_table=$PYTHON
    "$GPTQ_PYTHON" -c "import gptqmodel, optimum.gptq" > /dev/null 2>&1 && python_for_table=$GPTQ_PYTHON
    say "compression table (python $python_for_table) → $OUT/compression/report.md"
    if "$python_for_table" benchmarks/compression_report.py --config configs/smollm2_phrasebank_labelword_lora.yaml \
        --variant "zeroshot=models/smollm2-135m-instruct" \
        --variant "lora=$EXPORT" --int8 lora --bnb8 lora --bnb4 lora --gptq lora \
        --sapling_run "sapling=$(dirname "$sapling")" --sapling_depths 15 --gptq sapling_15of30 \
        --variant "trimllm=$trimllm" \
        --calibration_examples 128 --gptq_group_size 64 --reference lora --device cpu --threads 2 --repeats 1 --batch_size 32 \
        --gen_examples 32 --gen_tokens 16 --gen_batch 8 --out "$OUT/compression" > "$WORK/compression.out" 2>&1; then
      say "compression table done: $OUT/compression/report.md"
    else
      say "FAIL  compression table; see $WORK/compression.out"
      FAILED=1
    fi
  fi
  # the two recipes started from the ceiling, beside the merged LoRA model they started from
  sapling_lora=$(tested_checkpoint "${FIRST[smollm2_pb_sapling_from_lora]}")
  trimllm_lora=$(tested_checkpoint "${FIRST[smollm2_pb_trimllm_from_lora]}")
  if [ "$OUT/compression_from_lora/results.json" -nt "$sapling_lora" ] && \
     [ "$OUT/compression_from_lora/results.json" -nt "$trimllm_lora" ] && \
     grep -q "sapling_from_lora_${DEPTH_LAYERS}of30" "$OUT/compression_from_lora/results.json" && \
     [ "${FORCE_COMPRESSION:-0}" != 1 ]; then
    say "skip  compression_from_lora table (newer than its checkpoints)"
  elif "$PYTHON" benchmarks/compression_report.py --config configs/smollm2_phrasebank_labelword_lora.yaml \
      --variant "lora=$EXPORT" --sapling_run "sapling_from_lora=$(dirname "$sapling_lora")" \
      --sapling_depths "$DEPTH_LAYERS" 15 --sapling_start 30 --variant "trimllm_from_lora=$trimllm_lora" \
      --reference lora --device cpu --threads 2 --repeats 1 --batch_size 32 --gen_examples 32 --gen_tokens 16 \
      --gen_batch 8 --out "$OUT/compression_from_lora" > "$WORK/compression_from_lora.out" 2>&1; then
    say "compression_from_lora table done: $OUT/compression_from_lora/report.md"
  else
    say "FAIL  compression_from_lora table; see $WORK/compression_from_lora.out"
    FAILED=1
  fi
fi

if stage ptq; then
  for seed in "${PTQ_SEED_LIST[@]}"; do
    export_dir=$WORK/export_lora_merged_seed$seed
    table=$OUT/compression_seed$seed
    ensure_export "$seed" "$export_dir" || { FAILED=1; continue; }
    if [ "$table/results.json" -nt "$export_dir/config.json" ] && [ "${FORCE_COMPRESSION:-0}" != 1 ]; then
      say "skip  ptq table of seed $seed ($table/results.json is newer than its export)"
      continue
    fi
    step_to "ptq table of seed $seed" "$WORK/compression_seed$seed.out" \
      "$PYTHON" benchmarks/compression_report.py --config configs/smollm2_phrasebank_labelword_lora.yaml \
      --variant "lora=$export_dir" --int8 lora --bnb8 lora --bnb4 lora --reference lora --device cpu --threads 2 \
      --repeats 1 --batch_size 32 --gen_examples 32 --gen_tokens 16 --gen_batch 8 --out "$table"
  done
fi
[ "$FAILED" = 0 ] && say "study done: $REPORT_DIR/report.md, $OUT/compression/report.md"
[ "$FAILED" = 0 ]
