"""Results table and paired tests of reports/finqa_smollm2/ (run by its run.sh at the end; rerun any time).

    python reports/finqa_smollm2/collect.py      # from the repository root

Reads the newest finished folder of each row (logs/<row>/version_N with test_metrics.json): the zero-shot dev row,
the zero-shot test row and, per training seed, the LoRA row (its tested checkpoint recorded under "selected") and
the LoRA-last row (the same fit's final checkpoint). Writes here: results.csv (one row per evaluation), paired.csv
(each LoRA row and seed against zero-shot on the same test questions, selected against last, and seed against seed:
McNemar on per-question execution correctness, matched by question id) and results.md. A question whose answer does
not parse or execute counts as wrong.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter

import yaml

sys.path.insert(0, os.getcwd())
from finlight.report.compare import _write_csv, mcnemar_test, mean_std  # noqa: E402

OUT = "reports/finqa_smollm2"
METRICS = ("exec_acc", "prog_acc", "prog_acc_symbolic", "unparseable_rate", "nonexecutable_rate",
           "generation_tokens_per_s")


TRAINED = ("finqa_smollm2_lora", "finqa_smollm2_lora_last")


def finished(row: str) -> dict:
    """seed → newest folder of ``row`` holding a test_metrics.json (seed None for untrained rows)."""
    found: dict = {}
    for folder in glob.glob(f"logs/{row}/version_*"):
        if not os.path.isfile(f"{folder}/test_metrics.json"):
            continue
        config = yaml.safe_load(open(f"{folder}/config.yaml")) or {}
        report = json.load(open(f"{folder}/test_metrics.json"))
        if row == "finqa_smollm2_lora" and not report.get("selected"):
            continue  # a test outside `finlight seeds`
        seed = config.get("seed_everything") if row in TRAINED else None
        version = int(folder.rsplit("_", 1)[1])
        if seed not in found or version > found[seed][0]:
            found[seed] = (version, folder)
    return {seed: folder for seed, (_, folder) in found.items()}


def generations(folder: str) -> dict[str, dict]:
    """question id → its test_generations.jsonl row."""
    path = f"{folder}/test_generations.jsonl"
    if not os.path.isfile(path):
        return {}
    return {r["id"]: r for r in (json.loads(line) for line in open(path, encoding="utf-8"))}


def main() -> None:
    runs = []  # (row, seed, folder)
    for row in ("finqa_smollm2_dev", "finqa_smollm2_zeroshot"):
        runs += [(row, None, folder) for folder in finished(row).values()]
    for row in TRAINED:
        runs += [(row, seed, folder) for seed, folder in sorted(finished(row).items(), key=lambda kv: kv[0] or 0)]
    if not runs:
        sys.exit("collect: no finished rows under logs/finqa_smollm2_*; run reports/finqa_smollm2/run.sh first")
    table, answers = [], {}
    for row, seed, folder in runs:
        report = json.load(open(f"{folder}/test_metrics.json"))
        m = report["metrics"]
        rows = generations(folder)
        selected = report.get("selected") or {}
        table.append({"row": row, "seed": seed or "", "questions": len(rows),
                      **{k: m.get(f"test/{k}", "") for k in METRICS},
                      "statuses": " ".join(f"{k} {v}" for k, v in
                                           sorted(Counter(r["status"] for r in rows.values()).items())),
                      "selected_val_exec_acc": selected.get("value", ""),
                      "checkpoint": os.path.basename(selected.get("path") or report.get("checkpoint") or "")
                      or "(untuned)", "folder": folder})
        answers[(row, seed)] = rows
    pairs = []
    base = ("finqa_smollm2_zeroshot", None)
    comparisons = []
    for row in TRAINED:
        tuned = [k for k in answers if k[0] == row]
        comparisons += [(base, t) for t in tuned if base in answers]
        comparisons += [(a, b) for i, a in enumerate(tuned) for b in tuned[i + 1:]]
    comparisons += [(k, (TRAINED[1], k[1])) for k in answers if k[0] == TRAINED[0] and (TRAINED[1], k[1]) in answers]
    for a, b in comparisons:
        shared = sorted(set(answers[a]) & set(answers[b]))
        if not shared:
            continue
        right_a = [int(answers[a][q]["correct"]) for q in shared]
        right_b = [int(answers[b][q]["correct"]) for q in shared]
        test = mcnemar_test([1] * len(shared), right_a, right_b)
        pairs.append({"a": _label(a), "b": _label(b), "questions": len(shared),
                      "exec_acc_a": sum(right_a) / len(shared),
                      "exec_acc_b": sum(right_b) / len(shared), "a_only_right": test["b"], "b_only_right": test["c"],
                      "mcnemar_p": test["pvalue"]})
    _write_csv(f"{OUT}/results.csv", table)
    _write_csv(f"{OUT}/paired.csv", pairs)
    with open(f"{OUT}/results.md", "w") as handle:
        handle.write(_markdown(table, pairs))
    print(open(f"{OUT}/results.md").read())


def _label(key) -> str:
    row, seed = key
    name = {"finqa_smollm2_zeroshot": "zero-shot", "finqa_smollm2_lora": "LoRA (selected)",
            "finqa_smollm2_lora_last": "LoRA (last)"}.get(row, row)
    return name if seed is None else f"{name} seed {seed}"


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(table: list[dict], pairs: list[dict]) -> str:
    columns = ["row", "seed", "questions", *METRICS, "statuses", "selected_val_exec_acc", "checkpoint"]
    lines = ["# FinQA, SmolLM2-135M-Instruct: results (written by collect.py)", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in table]
    for row in TRAINED:
        lora = [r for r in table if r["row"] == row]
        if lora:
            lines += ["", f"{_label((row, None))} over seeds (mean ± sample std):"]
            for metric in METRICS[:5]:
                mean, std = mean_std([r[metric] for r in lora if r[metric] != ""])
                lines.append(f"- {metric}: {mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
                             + f" ({len(lora)} seeds)")
    if pairs:
        columns = list(pairs[0])
        lines += ["", "Paired on the same test questions (McNemar, exact below 25 discordant pairs):", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r[c], 4 if c == "mcnemar_p" else 3) for c in columns) + " |" for r in pairs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
