#!/usr/bin/env bash
# Regenerates requirements/cpu.lock from setup.cfg + constraints.txt and shows what changed.
#   bash scripts/lock.sh            # refresh to the newest versions setup.cfg allows
#   bash scripts/lock.sh --check    # exit 1 if the lock is not what setup.cfg + constraints.txt resolve to today
# torch is not written into the lock: it is installed first and pinned by constraints.txt (a CPU wheel here, the
# CUDA build of the same version on a GPU machine). The --no-deps wheels live in requirements/no-deps.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
out=requirements/cpu.lock
tmp=$(mktemp)
# --find-links: the CPU torch wheel this machine kind keeps on disk, so its (CUDA-free) metadata is resolved
"$UV" pip compile setup.cfg --extra dev --extra lora --extra onnx --extra dendrites --extra pretrained \
  -c constraints.txt --python-version 3.11 --find-links /opt/wheels --no-emit-package torch \
  --custom-compile-command "bash scripts/lock.sh" --quiet -o "$tmp"
if [ "${1:-}" = "--check" ]; then
  if diff <(grep -v '^#' "$out") <(grep -v '^#' "$tmp"); then echo "lock is current"; else echo "lock is stale: run bash scripts/lock.sh"; exit 1; fi
else
  diff <(grep -E '^[A-Za-z0-9]' "$out" 2>/dev/null || true) <(grep -E '^[A-Za-z0-9]' "$tmp") && echo "no change" || true
  mv "$tmp" "$out"
fi
