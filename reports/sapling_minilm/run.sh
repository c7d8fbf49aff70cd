#!/usr/bin/env bash
# Study 5 of issue 17: successive layer dropping (SAPLING) on a pretrained encoder. all-MiniLM-L6-v2 fine-tuned on
# Financial PhraseBank AllAgree (80/10/10 split, data.seed 42, max_length 64, batch 32, lr 1e-4) while dropping
# 6 → 3 layers, vs its first 3 layers fine-tuned directly, vs the 6-layer model, vs dynamic INT8 of the 6-layer
# model. Goal: a 3-layer model within 1 point of the 6-layer's accuracy at ≥ 1.8× its throughput.
#
#   bash reports/sapling_minilm/run.sh          # from anywhere; it runs in the repository root
#
# Rows (group name = experiment = logs/<name>/), training seeds 1 2 3 each:
#   minilm_phrasebank             the 6-layer baseline, configs/minilm_phrasebank.yaml (study 1's runs are reused
#                                 when logs/minilm_phrasebank/ holds finished ones of the same seeds; else run here,
#                                 unless study 1's runner is fitting that seed right now: then rerun this later)
#   sapling_minilm_phrasebank     configs/sapling_minilm_phrasebank.yaml: one layer dropped per epoch after epoch 0,
#                                 scored by ablation, 6 → 3, 6 epochs; tested at --select final_depth
#   sapling_minilm_phrasebank_bi  the same with method block_influence (--trainer.callbacks.method); final_depth
#   minilm3_phrasebank            configs/minilm3_phrasebank.yaml: keep_layers 3 (the first 3), 4 epochs; best
# Then `finlight report` of all twelve runs, paired against the 6-layer run of the same seed (report.md, runs.csv,
# groups.csv, paired.csv, val_curves.png here), and benchmarks/compression_report.py on seed 1's tested checkpoints
# — the 6-layer model (the reference of the acc_vs_ref_pt / speed_vs_ref columns), its dynamic INT8, every depth of
# the ablation run (sapling_6of6 … sapling_3of6: the best val/macro_f1 checkpoint of each depth; sapling_3of6 is
# the one seeds tested), the block-influence 3-layer model and minilm3 — on the test split, on CPU, one thread,
# the median of 5 timed passes, each variant in a fresh process: compression/ here (report.md, report.csv,
# results.json, pareto.png: size and docs/s vs accuracy with their Pareto fronts).
#
# Resumable: a (row, seed) counts as done when logs/<row>/version_N/ holds a finished test of it (test_metrics.json
# recording the checkpoint selection this row uses, config.yaml with that seed_everything) written after the row's
# config file was last changed; done ones are skipped, so a rerun continues where it stopped (an edited config
# reruns its seeds). Each (row, seed) is one `finlight seeds` whose console output goes to
# logs/sapling_minilm/<row>.seed<N>.out; one line per step goes to logs/sapling_minilm/progress.log. The report
# and the compression table are written only when every run exists (the newest run folder per seed); the
# compression table is not measured again while compression/results.json is newer than its checkpoints
# (FORCE_COMPRESSION=1 measures again).
#
# Environment: PYTHON (default .venv/bin/python, else python), SEEDS (default "1 2 3"; the compression table uses
# the first), DRY_RUN=1 (say what is done and what would run, run nothing).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
OUT=reports/sapling_minilm
WORK=logs/sapling_minilm
PROGRESS=$WORK/progress.log
BASELINE=minilm_phrasebank
# row | config | --select | extra fit options (the baseline last: study 1 may still be producing its runs)
ROWS=(
  "sapling_minilm_phrasebank|sapling_minilm_phrasebank|final_depth|"
  "sapling_minilm_phrasebank_bi|sapling_minilm_phrasebank|final_depth|--trainer.callbacks.method block_influence"
  "minilm3_phrasebank|minilm3_phrasebank|best|"
  "minilm_phrasebank|minilm_phrasebank|best|"
)
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null


# The newest finished run folder of row $1 (config $2, selection $3) with seed $4, or nothing (reports/done_run.py).
done_run() { "$PYTHON" reports/done_run.py "$1" "$2" "$3" "$4"; }


# Whether study 1's runner is fitting the baseline with seed $1 right now (its progress log's last line about it is a
# "start" and its console output changed in the last 15 minutes): then this study waits for that run instead of
# fitting the same model twice.
study1_running() {
  local log=logs/finetune_baselines/progress.log out=logs/finetune_baselines/$BASELINE.seed$1.out
  [ -f "$log" ] && [ -f "$out" ] || return 1
  grep " $BASELINE seed $1 " "$log" | tail -n 1 | grep -q "^[^ ]* start " || return 1
  [ -n "$(find "$out" -mmin -15)" ]
}

run_one() {  # row, config, select, seed, extra options…
  local row=$1 stem=$2 how=$3 seed=$4
  shift 4
  local folder
  folder=$(done_run "$row" "$stem" "$how" "$seed")
  if [ -n "$folder" ]; then
    say "skip  $row seed $seed (done: $folder)"
    return 0
  fi
  if [ "$row" = "$BASELINE" ] && study1_running "$seed"; then
    say "defer $row seed $seed: study 1 (reports/finetune_baselines/run.sh) is running it now; rerun this script later"
    return 0
  fi
  local command=("$PYTHON" -m finlight seeds --config "configs/$stem.yaml" --seeds "$seed" --select "$how"
                 --experiment "$row" --report_dir "$WORK/seeds_$row" --trainer.enable_progress_bar false "$@")
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
say "study start: seeds ${SEED_LIST[*]}, python $PYTHON"
for spec in "${ROWS[@]}"; do
  IFS='|' read -r row stem how extra <<< "$spec"
  read -r -a extra_args <<< "$extra"
  for seed in "${SEED_LIST[@]}"; do
    run_one "$row" "$stem" "$how" "$seed" "${extra_args[@]}"
  done
done

RUNS=()
MISSING=()
declare -A FIRST  # row → the run folder of the first seed
for spec in "${ROWS[@]}"; do
  IFS='|' read -r row stem how extra <<< "$spec"
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
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "would run: $PYTHON -m finlight report ${RUNS[*]} [+ the runs of: ${MISSING[*]}] --baseline $BASELINE --output_dir $OUT"
  echo "would run: $PYTHON benchmarks/compression_report.py … (seed ${SEED_LIST[0]}'s checkpoints) --out $OUT/compression"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi

say "report of ${#RUNS[@]} runs against $BASELINE → $OUT/report.md"
if "$PYTHON" -m finlight report "${RUNS[@]}" --baseline "$BASELINE" --output_dir "$OUT" > "$WORK/report.out" 2>&1; then
  say "report done: $OUT/report.md"
else
  say "FAIL  report; see $WORK/report.out"
  FAILED=1
fi

# compression table on the first seed's tested checkpoints
six=$(tested_checkpoint "${FIRST[minilm_phrasebank]}")
ablation=$(tested_checkpoint "${FIRST[sapling_minilm_phrasebank]}")
influence=$(tested_checkpoint "${FIRST[sapling_minilm_phrasebank_bi]}")
direct=$(tested_checkpoint "${FIRST[minilm3_phrasebank]}")
ablation_run=$(dirname "$ablation")
fresh=1
for source in "$six" "$ablation_run"/*.ckpt "$influence" "$direct"; do
  [ "$OUT/compression/results.json" -nt "$source" ] || fresh=0
done
if [ "$fresh" = 1 ] && [ "${FORCE_COMPRESSION:-0}" != 1 ]; then
  say "skip  compression table ($OUT/compression/results.json is newer than its checkpoints)"
else
  say "compression table of seed ${SEED_LIST[0]}'s checkpoints → $OUT/compression/report.md"
  if "$PYTHON" benchmarks/compression_report.py --config configs/minilm_phrasebank.yaml \
      --variant "minilm6=$six" --int8 minilm6 --sapling_run "$ablation_run" \
      --variant "sapling_bi_3of6=$influence" --variant "minilm3_direct=$direct" \
      --reference minilm6 --device cpu --threads 1 --repeats 5 --out "$OUT/compression" \
      > "$WORK/compression.out" 2>&1; then
    say "compression table done: $OUT/compression/report.md"
  else
    say "FAIL  compression table; see $WORK/compression.out"
    FAILED=1
  fi
fi
[ "$FAILED" = 0 ] && say "study done: $OUT/report.md, $OUT/compression/report.md"
[ "$FAILED" = 0 ]
