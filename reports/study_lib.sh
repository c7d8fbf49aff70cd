# Sourced by every study runner (reports/*/run.sh) once it is in the repository root: the environment each run
# needs, the Python to run, the progress-log line and the checkpoint a finished `seeds` run tested.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

# one timestamped line on the console and in the runner's $PROGRESS log
say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" | tee -a "$PROGRESS"; }

# the checkpoint run folder $1 tested (what `finlight seeds` recorded under "selected")
tested_checkpoint() {
  "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/test_metrics.json"))["selected"]["path"])' "$1"
}
