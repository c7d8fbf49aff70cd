"""Results table and paired tests of reports/smollm2_fsa/ (run by its run.sh at the end; rerun any time).

    python reports/smollm2_fsa/collect.py      # from the repository root

Reads the newest finished folder of each row (logs/<row>/version_N with val_metrics.json): the zero-shot rows and,
per training seed and training-set size, the tuned rows. Writes here (or to $REPORT_DIR): results.csv (one row per
evaluation), paired.csv (each tuned row against the zero-shot model in the same mode, and tuned rows against each
other: McNemar on per-example correctness, and for constrained scoring a paired bootstrap of macro-F1; unparseable
answers count as errors) and results.md.
Per-example results come from val_predictions.jsonl (constrained) and val_generations.jsonl (generate), matched by
the example's index in the validation split.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, os.getcwd())
from finlight.report.compare import _write_csv, mcnemar_test, mean_std, paired_bootstrap  # noqa: E402

OUT = os.environ.get("REPORT_DIR", "reports/smollm2_fsa")  # run.sh passes its REPORT_DIR
MODES = ("constrained", "generate")


def finished(row: str) -> dict[tuple, str]:
    """(seed, training prompts) → newest folder of ``row`` holding a val_metrics.json."""
    found: dict[tuple, tuple[int, str]] = {}
    for folder in glob.glob(f"logs/{row}/version_*"):
        if not os.path.isfile(f"{folder}/val_metrics.json"):
            continue
        seed = (yaml.safe_load(open(f"{folder}/config.yaml")) or {}).get("seed_everything")
        key = (seed, train_prompts(json.load(open(f"{folder}/val_metrics.json")).get("checkpoint")))
        version = int(folder.rsplit("_", 1)[1])
        if key not in found or version > found[key][0]:
            found[key] = (version, folder)
    return {key: folder for key, (_, folder) in found.items()}


def train_prompts(checkpoint) -> object:
    """The training subsample (and whether the batch order was the seed's own) of the fit that wrote
    ``checkpoint`` (checkpoints/<stem>/version_N/… → the fit's logs/<stem>/version_N/config.yaml), or "" for the
    untuned model."""
    if not checkpoint:
        return ""
    parts = list(Path(checkpoint).parent.parts)
    parts[len(parts) - 1 - parts[::-1].index("checkpoints")] = "logs"
    config = Path(*parts) / "config.yaml"
    if not config.is_file():
        return "?"
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    prompts = data.get("train_subsample") or "all"
    # run.sh ORDER=seed: the batch order is the training seed's too (else data.seed's, the same for every seed)
    return prompts if data.get("order_seed") is None else f"{prompts}, own order"


def per_example(folder: str, mode: str, names: list[str]) -> tuple[list[int], list[int]] | None:
    """(labels, predictions) in index order; an unparseable answer is the extra class ``len(names)``."""
    path = f"{folder}/val_{'predictions' if mode == 'constrained' else 'generations'}.jsonl"
    if not os.path.isfile(path):
        return None
    rows = sorted((json.loads(line) for line in open(path, encoding="utf-8")), key=lambda r: r["index"])
    key = "predicted" if mode == "constrained" else "parsed"
    return ([names.index(r["label"]) for r in rows],
            [len(names) if r[key] is None else names.index(r[key]) for r in rows])


def main() -> None:
    runs = []  # (name, mode, seed, folder)
    for mode in MODES:
        for _, folder in finished(f"smollm2_fsa_zeroshot_{mode}").items():
            runs.append(("zero-shot", mode, None, folder))
        for (seed, prompts), folder in sorted(finished(f"smollm2_fsa_lora_val_{mode}").items(), key=str):
            runs.append((f"tuned {prompts}", mode, seed, folder))
    if not runs:
        sys.exit("collect: no finished rows under logs/smollm2_fsa_*; run reports/smollm2_fsa/run.sh first")
    table, examples = [], {}
    for name, mode, seed, folder in runs:
        report = json.load(open(f"{folder}/val_metrics.json"))
        m, names = report["metrics"], report["label_names"]
        subsample = train_prompts(report.get("checkpoint"))
        speed = m.get("val/scoring_tokens_per_s") if mode == "constrained" else m.get("val/generation_tokens_per_s")
        table.append({"row": name, "mode": mode, "seed": seed if seed is not None else "",
                      "train_prompts": subsample or "", "acc": m["val/acc"], "macro_f1": m["val/macro_f1"],
                      **{f"f1_{n}": m[f"val/f1_{n}"] for n in names},
                      "unparseable": m.get("val/unparseable_rate", ""), "tokens_per_s": speed, "folder": folder})
        examples[(name, mode, seed)] = per_example(folder, mode, names)
    pairs = []
    for mode in MODES:
        base = next((k for k in examples if k[0] == "zero-shot" and k[1] == mode), None)
        tuned = sorted((k for k in examples if k[0].startswith("tuned") and k[1] == mode), key=str)
        comparisons = [(base, t) for t in tuned if base] + [(a, b) for i, a in enumerate(tuned) for b in tuned[i + 1:]]
        for a, b in comparisons:
            if examples[a] is None or examples[b] is None:
                continue
            (labels, pred_a), (_, pred_b) = examples[a], examples[b]
            test = mcnemar_test(labels, pred_a, pred_b)
            row = {"mode": mode, "a": _label(a), "b": _label(b), "n": len(labels), "mcnemar_b": test["b"],
                   "mcnemar_c": test["c"], "mcnemar_p": test["pvalue"]}
            if mode == "constrained":  # no unparseable class: macro-F1 over the k labels, as the module reports
                boot = paired_bootstrap(labels, pred_a, pred_b, k=len(names))
                row.update(delta_macro_f1=boot["delta"], ci_low=boot["ci_low"], ci_high=boot["ci_high"],
                           bootstrap_p=boot["pvalue"])
            pairs.append(row)
    _write_csv(f"{OUT}/results.csv", table)
    _write_csv(f"{OUT}/paired.csv", pairs)
    with open(f"{OUT}/results.md", "w") as handle:
        handle.write(_markdown(table, pairs, names))
    print(open(f"{OUT}/results.md").read())


def _label(key) -> str:
    return key[0] if key[2] is None else f"{key[0]} seed {key[2]}"


def _f(value, digits=4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(table, pairs, names) -> str:
    lines = ["# SmolLM2-135M-Instruct on Kaggle FSA: results (written by collect.py)", "",
             "Whole validation split (587 sentences). `unparseable`: share of generated answers that start with no "
             "label word (counted as errors).", "",
             "| row | mode | seed | train prompts | acc | macro-F1 | F1 " + " / ".join(names) + " | unparseable | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        f1s = " / ".join(f"{r[f'f1_{n}']:.3f}" for n in names)
        lines.append(f"| {r['row']} | {r['mode']} | {r['seed']} | {r['train_prompts']} | {r['acc']:.4f} | "
                     f"{r['macro_f1']:.4f} | {f1s} | {_f(r['unparseable'], 3)} | {_f(r['tokens_per_s'], 1)} |")
    lines += ["", "Tuned rows (`tuned N`: LoRA on N training prompts), mean ± std over seeds:", ""]
    for group in sorted({(r["row"], r["mode"]) for r in table if r["row"].startswith("tuned")}):
        rows = [r for r in table if (r["row"], r["mode"]) == group]
        acc, macro = mean_std([r["acc"] for r in rows]), mean_std([r["macro_f1"] for r in rows])
        std = lambda s: "" if s is None else f" ± {s:.4f}"  # noqa: E731
        size, _, order = group[0].partition(", ")  # "tuned all, own order" → "tuned all prompts (own order)"
        label = f"{size} prompts" + (f" ({order})" if order else "")
        lines.append(f"- {label}, {group[1]}: acc {acc[0]:.4f}{std(acc[1])}, macro-F1 "
                     f"{macro[0]:.4f}{std(macro[1])} ({len(rows)} seed{'s' if len(rows) > 1 else ''})")
    lines += ["", "Paired tests on the same 587 sentences (McNemar: b = A right, B wrong; c = A wrong, B right; "
              "bootstrap: Δ macro-F1 = B − A, 10,000 resamples, 95 % interval):", "",
              "| mode | A | B | McNemar b / c | p | Δ macro-F1 [95 % CI] | p |", "|---|---|---|---|---|---|---|"]
    for p in pairs:
        boot = (f"{p['delta_macro_f1']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['bootstrap_p']:.4f}"
                if "delta_macro_f1" in p else "n/a (unparseable answers) | ")
        lines.append(f"| {p['mode']} | {p['a']} | {p['b']} | {p['mcnemar_b']} / {p['mcnemar_c']} | "
                     f"{p['mcnemar_p']:.4g} | {boot} |")
    answers = []
    for r in table:
        if r["mode"] == "generate":
            rows = [json.loads(line) for line in open(f"{r['folder']}/val_generations.jsonl", encoding="utf-8")]
            common = Counter(row["answer"] for row in rows).most_common(5)
            answers.append(f"- {r['row']}{' seed ' + str(r['seed']) if r['seed'] != '' else ''}: " +
                           ", ".join(f"`{a}` {n}" for a, n in common))
    if answers:
        lines += ["", "Most frequent generated answers (verbatim, of 587):", ""] + answers
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
