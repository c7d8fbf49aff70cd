"""The newest finished run folder of a study row, for the study runners' resume (reports/*/run.sh).

    python reports/done_run.py ROW CONFIG HOW SEED [STAGE]   # prints logs/ROW/version_N, or nothing

A folder counts when its test_metrics.json records the tested checkpoint ("selected", with ``how`` = HOW unless HOW
is ``any``), its config.yaml has ``seed_everything`` = SEED, and it was written after configs/CONFIG.yaml last changed.
STAGE ``val`` (default ``test``) looks for a finished ``validate`` instead: a val_metrics.json (studies without a test
split, e.g. reports/smollm2_fsa/); HOW must then be ``any``.
"""

import glob
import json
import os
import sys

import yaml

row, stem, how, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stage = sys.argv[5] if len(sys.argv) > 5 else "test"
changed = os.path.getmtime(f"configs/{stem}.yaml")
found = []
for folder in glob.glob(f"logs/{row}/version_*"):
    metrics, config = os.path.join(folder, f"{stage}_metrics.json"), os.path.join(folder, "config.yaml")
    try:
        if os.path.getmtime(metrics) < changed:
            continue
        selected = json.load(open(metrics)).get("selected")
        if stage == "test" and (not selected or (how != "any" and selected.get("how") != how)):
            continue
        if (yaml.safe_load(open(config)) or {}).get("seed_everything") != seed:
            continue
        found.append((int(folder.rsplit("_", 1)[1]), folder))
    except (OSError, ValueError, yaml.YAMLError):
        continue
if found:
    print(max(found)[1])
