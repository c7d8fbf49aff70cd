#!/usr/bin/env bash
# Study 4 of issue 17: PerforatedAI dendrites on a pretrained encoder (seed: Perforated Phi-2). all-MiniLM-L6-v2 fine-tuned
# on Financial PhraseBank AllAgree (80/10/10 split, data.seed 42, max_length 64, batch 32, lr 1e-4) with and without
# dendrites, against an equal-parameter control (the same extra parameters spent on an MLP head) and a plain run of the
# same length. Question: do dendrites beat spending those parameters elsewhere?
#
#   bash reports/dendrites_minilm/run.sh          # from anywhere; it runs in the repository root
#
# Rows (group name = experiment = logs/<name>/), training seeds 1 2 3 each, every row tests its best val/macro_f1
# checkpoint:
#   dendritic_minilm_phrasebank   configs/dendritic_minilm_phrasebank.yaml: one dendrite set on the FFN layers of
#                                 blocks 4-5 after epoch 2 (switch_every 3), 6 epochs
#   minilm_phrasebank_mlp_head    configs/minilm_phrasebank_mlp_head.yaml: head 384 → 6103 → 3 (+2,366,812 parameters,
#                                 the set adds 2,366,976), 6 epochs
#   minilm_phrasebank_6ep         configs/minilm_phrasebank.yaml with --trainer.max_epochs 6: plain, as long as the two
#                                 rows above (is a gain the dendrites' or the extra epochs'?)
#   minilm_phrasebank             the baseline, configs/minilm_phrasebank.yaml, 4 epochs: study 1's runs are reused when
#                                 logs/minilm_phrasebank/ holds finished ones of the same seeds (else run here, unless
#                                 study 1's runner is fitting that seed right now: then rerun this later)
# Then `finlight report` of all twelve runs, paired against the baseline run of the same seed (report.md, runs.csv,
# groups.csv, paired.csv, confusion.csv, val_curves.png: val acc / macro-F1 / loss per epoch, overlaid, here), the same
# report of the dendritic row against the MLP-head row (vs_mlp_head/: the equal-parameter pairing) and of the 6-epoch
# rows against the plain 6-epoch run (vs_6ep/: identical schedules), and
# benchmarks/compression_report.py on seed 1's tested checkpoints of every row (test split, CPU, one thread, median of
# 5 timed passes, each variant in a fresh process): compression/ here (report.md, report.csv, results.json, pareto.png).
#
# Resumable: a (row, seed) counts as done when logs/<row>/version_N/ holds a finished test of it (test_metrics.json
# recording the "best" selection, config.yaml with that seed_everything) written after the row's config file last
# changed (reports/done_run.py); done ones are skipped, so a rerun continues where it stopped. A failed seed skips the
# row's later seeds (they would fail the same way). Each (row, seed) is one `finlight seeds` whose console output goes
# to logs/dendrites_minilm/<row>.seed<N>.out; one line per step goes to logs/dendrites_minilm/progress.log. The report
# and the compression table are written only when every run exists; the compression table is not measured again while
# compression/results.json is newer than its checkpoints (FORCE_COMPRESSION=1 measures again).
#
# Environment: PYTHON (default .venv/bin/python, else python), SEEDS (default "1 2 3"; the compression table uses the
# first), ONLY="row row …" (run and report only these rows; the baseline is always included), DRY_RUN=1 (say what is
# done and what would run, run nothing).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source reports/study_lib.sh  # HF_HUB_OFFLINE, PYTHON, say, tested_checkpoint
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
OUT=reports/dendrites_minilm
WORK=logs/dendrites_minilm
PROGRESS=$WORK/progress.log
BASELINE=minilm_phrasebank
METRICS=(test/acc test/macro_f1 test/weighted_f1 test/loss test/dendrite_sets)
# row | config | extra fit options (the baseline last: study 1 may still be producing its runs)
ROWS=(
  "dendritic_minilm_phrasebank|dendritic_minilm_phrasebank|"
  "minilm_phrasebank_mlp_head|minilm_phrasebank_mlp_head|"
  "minilm_phrasebank_6ep|minilm_phrasebank|--trainer.max_epochs 6"
  "minilm_phrasebank|minilm_phrasebank|"
)
if [ -n "${ONLY:-}" ]; then
  KEPT=()
  for spec in "${ROWS[@]}"; do
    row=${spec%%|*}
    [[ " $ONLY $BASELINE " == *" $row "* ]] && KEPT+=("$spec")
  done
  ROWS=("${KEPT[@]}")
fi
mkdir -p "$WORK"
[ "${DRY_RUN:-0}" = 1 ] && PROGRESS=/dev/null


# The newest finished run folder of row $1 (config $2) with seed $3, or nothing (reports/done_run.py).
done_run() { "$PYTHON" reports/done_run.py "$1" "$2" best "$3"; }


# Whether study 1's runner is fitting the baseline with seed $1 right now (see reports/sapling_minilm/run.sh).
study1_running() {
  local log=logs/finetune_baselines/progress.log out=logs/finetune_baselines/$BASELINE.seed$1.out
  [ -f "$log" ] && [ -f "$out" ] || return 1
  grep " $BASELINE seed $1 " "$log" | tail -n 1 | grep -q "^[^ ]* start " || return 1
  [ -n "$(find "$out" -mmin -15)" ]
}

ROW_FAILED=0
run_one() {  # row, config, seed, extra options…
  local row=$1 stem=$2 seed=$3
  shift 3
  local folder
  folder=$(done_run "$row" "$stem" "$seed")
  if [ -n "$folder" ]; then
    say "skip  $row seed $seed (done: $folder)"
    return 0
  fi
  if [ "$ROW_FAILED" = 1 ]; then
    say "skip  $row seed $seed: an earlier seed of this row failed (fix it, then rerun)"
    return 0
  fi
  if [ "$row" = "$BASELINE" ] && study1_running "$seed"; then
    say "defer $row seed $seed: study 1 (reports/finetune_baselines/run.sh) is running it now; rerun this script later"
    return 0
  fi
  local command=("$PYTHON" -m finlight seeds --config "configs/$stem.yaml" --seeds "$seed" --select best
                 --experiment "$row" --report_dir "$WORK/seeds_$row" --trainer.enable_progress_bar false "$@")
  local out="$WORK/$row.seed$seed.out"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would run: ${command[*]}"
    return 0
  fi
  say "start $row seed $seed → $out"
  local start=$SECONDS
  if "${command[@]}" > "$out" 2>&1; then
    say "done  $row seed $seed in $((SECONDS - start)) s: $(done_run "$row" "$stem" "$seed")"
  else
    say "FAIL  $row seed $seed after $((SECONDS - start)) s (exit $?); see $out"
    FAILED=1
    ROW_FAILED=1
  fi
}

FAILED=0
say "study start: seeds ${SEED_LIST[*]}, python $PYTHON"
for spec in "${ROWS[@]}"; do
  IFS='|' read -r row stem extra <<< "$spec"
  read -r -a extra_args <<< "$extra"
  ROW_FAILED=0
  for seed in "${SEED_LIST[@]}"; do
    run_one "$row" "$stem" "$seed" "${extra_args[@]}"
  done
done

RUNS=()
MISSING=()
declare -A FIRST  # row → the run folder of the first seed
for spec in "${ROWS[@]}"; do
  IFS='|' read -r row stem extra <<< "$spec"
  for seed in "${SEED_LIST[@]}"; do
    folder=$(done_run "$row" "$stem" "$seed")
    if [ -n "$folder" ]; then
      RUNS+=("$folder")
      [ "$seed" = "${SEED_LIST[0]}" ] && FIRST[$row]=$folder
    else
      MISSING+=("$row/seed$seed")
    fi
  done
done
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "would run: $PYTHON -m finlight report ${RUNS[*]} [+ the runs of: ${MISSING[*]}] --baseline $BASELINE --metrics ${METRICS[*]} --output_dir $OUT"
  echo "would run: $PYTHON benchmarks/compression_report.py … (seed ${SEED_LIST[0]}'s checkpoints of every row) --out $OUT/compression"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  say "no report: missing ${MISSING[*]} (rerun this script; finished runs are skipped)"
  exit 1
fi

say "report of ${#RUNS[@]} runs against $BASELINE → $OUT/report.md"
if "$PYTHON" -m finlight report "${RUNS[@]}" --baseline "$BASELINE" --metrics "${METRICS[@]}" --output_dir "$OUT" \
    > "$WORK/report.out" 2>&1; then
  say "report done: $OUT/report.md"
else
  say "FAIL  report; see $WORK/report.out"
  FAILED=1
fi

# the fair question: dendrites against the same parameters spent on the head, paired seed by seed
if [ -n "${FIRST[minilm_phrasebank_mlp_head]:-}" ] && [ -n "${FIRST[dendritic_minilm_phrasebank]:-}" ]; then
  PAIR=()
  for folder in "${RUNS[@]}"; do
    case $folder in logs/dendritic_minilm_phrasebank/*|logs/minilm_phrasebank_mlp_head/*) PAIR+=("$folder") ;; esac
  done
  if "$PYTHON" -m finlight report "${PAIR[@]}" --baseline minilm_phrasebank_mlp_head --metrics "${METRICS[@]}" \
      --output_dir "$OUT/vs_mlp_head" > "$WORK/report_vs_mlp_head.out" 2>&1; then
    say "report done: $OUT/vs_mlp_head/report.md (dendrites vs the equal-parameter MLP head)"
  else
    say "FAIL  report vs the MLP head; see $WORK/report_vs_mlp_head.out"
    FAILED=1
  fi
fi

# identical conditions: the three 6-epoch rows paired against the plain 6-epoch run (same schedule; until its switch
# the dendritic run is that run, number for number)
if [ -n "${FIRST[minilm_phrasebank_6ep]:-}" ]; then
  SIX=()
  for folder in "${RUNS[@]}"; do
    case $folder in logs/"$BASELINE"/*) ;; *) SIX+=("$folder") ;; esac
  done
  if "$PYTHON" -m finlight report "${SIX[@]}" --baseline minilm_phrasebank_6ep --metrics "${METRICS[@]}" \
      --output_dir "$OUT/vs_6ep" > "$WORK/report_vs_6ep.out" 2>&1; then
    say "report done: $OUT/vs_6ep/report.md (the 6-epoch rows vs the plain 6-epoch run)"
  else
    say "FAIL  report vs the 6-epoch run; see $WORK/report_vs_6ep.out"
    FAILED=1
  fi
fi

# size / parameters / speed of the first seed's tested checkpoints (the 6-epoch plain row has the baseline's
# architecture: the same size and speed, not measured again)
if [ -z "${FIRST[dendritic_minilm_phrasebank]:-}" ] || [ -z "${FIRST[minilm_phrasebank_mlp_head]:-}" ]; then
  say "skip  compression table (ONLY left out the dendritic or the MLP-head row)"
  [ "$FAILED" = 0 ]
  exit
fi
base=$(tested_checkpoint "${FIRST[minilm_phrasebank]}")
dendritic=$(tested_checkpoint "${FIRST[dendritic_minilm_phrasebank]}")
head=$(tested_checkpoint "${FIRST[minilm_phrasebank_mlp_head]}")
fresh=1
for source in "$base" "$dendritic" "$head"; do
  [ "$OUT/compression/results.json" -nt "$source" ] || fresh=0
done
if [ "$fresh" = 1 ] && [ "${FORCE_COMPRESSION:-0}" != 1 ]; then
  say "skip  compression table ($OUT/compression/results.json is newer than its checkpoints)"
else
  say "compression table of seed ${SEED_LIST[0]}'s checkpoints → $OUT/compression/report.md"
  if "$PYTHON" benchmarks/compression_report.py --config configs/minilm_phrasebank.yaml \
      --variant "minilm_4ep=$base" --variant "dendritic=$dendritic" --variant "mlp_head=$head" \
      --reference minilm_4ep --device cpu --threads 1 --repeats 5 \
      --out "$OUT/compression" > "$WORK/compression.out" 2>&1; then
    say "compression table done: $OUT/compression/report.md"
  else
    say "FAIL  compression table; see $WORK/compression.out"
    FAILED=1
  fi
fi
[ "$FAILED" = 0 ] && say "study done: $OUT/report.md, $OUT/compression/report.md"
[ "$FAILED" = 0 ]
