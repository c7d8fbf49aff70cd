# Sourced by every study runner (reports/*/run.sh) once it is in the repository root: the environment each run
# needs, the Python to run, the progress-log line, one logged step and the checkpoint a finished `seeds` run tested.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

# one timestamped line on the console and in the runner's $PROGRESS log
say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" | tee -a "$PROGRESS"; }

# the checkpoint run folder $1 tested (what `finlight seeds` recorded under "selected")
tested_checkpoint() {
  "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/test_metrics.json"))["selected"]["path"])' "$1"
}

# step_to NAME OUT COMMAND…: run it (console → OUT) unless DRY_RUN=1, with start / done / FAIL lines in the
# progress log; a failure sets FAILED=1 and returns 1 (callers may `|| break`)
step_to() {
  local name=$1 out=$2
  shift 2
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "would run: $*"; return 0; fi
  say "start $name → $out"
  local start=$SECONDS
  if "$@" > "$out" 2>&1; then
    say "done  $name in $((SECONDS - start)) s"
  else
    say "FAIL  $name after $((SECONDS - start)) s; see $out"
    FAILED=1
    return 1
  fi
}

# step NAME COMMAND…: step_to with the console in $WORK/NAME.out
step() { step_to "$1" "$WORK/$1.out" "${@:2}"; }
