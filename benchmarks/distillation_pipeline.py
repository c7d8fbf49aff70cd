"""The whole distillation pipeline, offline, on real data — and the table fresh / CE / KD / PKD.

    HF_HUB_OFFLINE=1 python benchmarks/distillation_pipeline.py            # ~15 min on a busy 2-core CPU
    HF_HUB_OFFLINE=1 python benchmarks/distillation_pipeline.py --quick    # a smoke run (~3 min)

1. Teacher: a larger from-scratch BERT (4 layers, hidden 192) trained by finlight on Financial PhraseBank
   AllAgree (split 80/10/10, seed 42; best epoch on val/macro_f1).
2. Pseudo-labels: the teacher labels the first ``--pseudo_rows`` distinct sentences of the ECTSum train
   transcripts (``python -m finlight pseudo-label``, resumable JSONL).
3. Students of bert-tiny shape (2 layers, hidden 128), from scratch, for each seed:
   fresh — PhraseBank only; CE / KD (T, α) / PKD (online teacher, PKD-Skip, learned 128→192 projection) —
   stage 1 on the pseudo-labelled corpus, then stage 2 = the fresh recipe on PhraseBank, initialised from
   the stage-1 checkpoint (``init_from``). Every run keeps its best epoch on val/macro_f1.
4. Each final student is evaluated once on the PhraseBank test split: accuracy, macro-F1, average
   KL(teacher ‖ student) (T = 1), row-normalised confusion matrix; plus parameters, on-disk size (exported
   safetensors) and latency per document (batch 1, CPU) of teacher and student.

Everything lands under ``--out`` (default ``bench_out/distillation``): runs, ``pseudo_labels.jsonl``,
``results.json`` and the printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
PHRASEBANK = DATA / "financial_phrasebank" / "Sentences_AllAgree.txt"
ECT_GLOB = str(DATA / "ect" / "train" / "ects" / "*.txt")
LABELS = ["negative", "neutral", "positive"]
TRAINER = ["--trainer.deterministic", "true", "--trainer.enable_progress_bar", "false",
           "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "20",
           "--report.write_png", "false"]


def scratch_args(prefix: str, hidden: int, layers: int, heads: int, ffn: int, vocab: int = 4000) -> list[str]:
    s = f"--model.init_args.{prefix}"
    return [f"{s}.hidden_size", str(hidden), f"{s}.num_layers", str(layers), f"{s}.num_heads", str(heads),
            f"{s}.intermediate_size", str(ffn), f"{s}.vocab_size", str(vocab), f"{s}.max_position_embeddings", "128"]


def data_args(module: str, batch_size: int = 32, pseudo: str | None = None) -> list[str]:
    args = ["--data", module, "--data.init_args.path", str(PHRASEBANK),
            "--data.init_args.label_names", json.dumps(LABELS), "--data.init_args.split_ratios", "[0.8, 0.1, 0.1]",
            "--data.init_args.seed", "42", "--data.init_args.max_length", "64",
            "--data.init_args.batch_size", str(batch_size), "--data.init_args.eval_batch_size", "128"]
    if pseudo:
        args += ["--data.init_args.pseudo_label_path", pseudo]
    return args


def fit(name: str, seed: int, args: list[str]) -> str:
    """One ``finlight fit`` in-process; returns the best checkpoint (selected on val/macro_f1)."""
    from finlight.cli import run_cli

    start = time.perf_counter()
    cli = run_cli(["fit", "--seed_everything", str(seed), "--experiment", name, *TRAINER, *args])
    best = cli.trainer.checkpoint_callback.best_model_path
    score = float(cli.trainer.checkpoint_callback.best_model_score)
    print(f"[{name}] best val/macro_f1 {score:.4f} in {time.perf_counter() - start:.0f}s → {best}", flush=True)
    return best


def test_split() -> tuple[list[str], list[int]]:
    from finlight.core import ClassificationDataModule

    data = ClassificationDataModule(path=str(PHRASEBANK), label_names=LABELS, split_ratios=(0.8, 0.1, 0.1), seed=42)
    data.setup("test")
    return [r.text for r in data.splits["test"]], list(data.labels["test"])


def evaluate(ckpt: str, texts: list[str], labels: list[int], teacher_logits=None) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from finlight.distill.losses import distillation_kl
    from finlight.distill.teacher import classify_logits, column_order, load_classifier

    model = load_classifier(ckpt)
    logits = classify_logits(model.model, model.tokenizer, texts, 128, 64)[:, column_order(model.label_names, LABELS)]
    preds = logits.argmax(-1).numpy()
    out = {"acc": accuracy_score(labels, preds), "macro_f1": f1_score(labels, preds, average="macro"),
           "confusion_normalized": np.round(confusion_matrix(labels, preds, normalize="true"), 4).tolist(),
           "logits": logits}
    if teacher_logits is not None:
        out["kl_teacher"] = float(distillation_kl(logits, teacher_logits, 1.0))
    return out


def footprint(ckpt: str, texts: list[str], folder: str) -> dict:
    """Parameters, exported size on disk, and latency per document at batch size 1 (median of 3 passes)."""
    import torch

    from finlight.deploy.export import export_hf
    from finlight.distill.teacher import load_classifier

    if os.path.isdir(folder):
        shutil.rmtree(folder)
    export_hf(ckpt, folder)
    size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    model = load_classifier(ckpt)
    encoded = [model.tokenizer(t, return_tensors="pt", truncation=True, max_length=64) for t in texts]
    from _timing import seconds_per_call

    def one_pass() -> None:
        for enc in encoded:
            model.model(**enc)

    with torch.inference_mode():
        passes = [s / len(encoded) for s in seconds_per_call(one_pass, repeats=3)]
    return {"parameters": sum(p.numel() for p in model.model.parameters()), "size_mb": size / 2 ** 20,
            "latency_ms_per_doc": 1000 * statistics.median(passes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "bench_out" / "distillation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pseudo_rows", type=int, default=3000)
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--stage1_epochs", type=int, default=2)
    parser.add_argument("--stage2_epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a 2-core machine shared with other jobs, 2 threads ran ~9× slower "
                             "than 1 (oversubscription)")
    parser.add_argument("--temperature", type=float, default=5.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the pipeline runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pseudo_rows, args.teacher_epochs = args.seeds[:2], 300, 1
        args.stage1_epochs, args.stage2_epochs = 1, 1
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.chdir(out)
    started = time.perf_counter()

    # 1. teacher
    teacher_ckpt = fit("teacher", 42, [
        "--model", "finlight.core.SequenceClassifier", *scratch_args("scratch", 192, 4, 3, 768),
        "--model.init_args.learning_rate", "1e-3", "--model.init_args.warmup_ratio", "0.1",
        "--trainer.max_epochs", str(args.teacher_epochs), *data_args("finlight.core.ClassificationDataModule")])

    # 2. pseudo-labels on ECT
    from finlight.distill.pseudo_label import pseudo_label

    start = time.perf_counter()
    state = pseudo_label(teacher_ckpt, [ECT_GLOB], "pseudo_labels.jsonl", limit=args.pseudo_rows, batch_size=128,
                         max_length=64, chunk_size=1000, progress_bar=False)
    print(f"[pseudo-label] {state['rows_done']} ECT sentences in {time.perf_counter() - start:.0f}s "
          f"({state['corpus_counts']})", flush=True)
    with open("pseudo_labels.jsonl", encoding="utf-8") as handle:
        counts = {}
        for line in handle:
            label = json.loads(line)["label"]
            counts[label] = counts.get(label, 0) + 1
    print(f"[pseudo-label] teacher's labels on ECT: {counts}", flush=True)

    # 3. students
    student = ["--model", "finlight.distill.DistillationStudent", *scratch_args("scratch", 128, 2, 2, 512),
               "--model.init_args.learning_rate", "1e-3", "--model.init_args.warmup_ratio", "0.1"]
    stage2 = [*student, "--model.init_args.loss", "ce", "--trainer.max_epochs", str(args.stage2_epochs),
              *data_args("finlight.distill.PseudoLabelledDataModule")]
    stage1 = {
        "CE": ["--model.init_args.loss", "ce"],
        f"KD (T={args.temperature:g})": ["--model.init_args.loss", "kd", "--model.init_args.temperature",
                                         str(args.temperature), "--model.init_args.alpha", str(args.alpha)],
        f"PKD (T={args.temperature:g})": ["--model.init_args.loss", "pkd", "--model.init_args.temperature",
                                          str(args.temperature), "--model.init_args.alpha", str(args.alpha),
                                          "--model.init_args.beta", str(args.beta), "--model.init_args.teacher",
                                          teacher_ckpt, "--model.init_args.pkd_layers", "skip"],
    }
    finals: dict[str, dict[int, str]] = {"fresh": {}}
    for seed in args.seeds:
        finals["fresh"][seed] = fit(f"fresh_s{seed}", seed, stage2)
        for method, extra in stage1.items():
            tag = method.split(" ")[0].lower()
            first = fit(f"{tag}_s{seed}_stage1", seed, [*student, *extra, "--trainer.max_epochs",
                                                       str(args.stage1_epochs),
                                                       *data_args("finlight.distill.PseudoLabelledDataModule",
                                                                  pseudo="pseudo_labels.jsonl")])
            finals.setdefault(method, {})[seed] = fit(f"{tag}_s{seed}_stage2", seed,
                                                      [*stage2, "--model.init_args.init_from", first])

    # 4. one evaluation on the test split
    texts, labels = test_split()
    teacher = evaluate(teacher_ckpt, texts, labels)
    results = {"settings": vars(args), "test_size": len(texts), "pseudo_label_counts": counts,
               "teacher": {k: v for k, v in teacher.items() if k != "logits"}, "students": {}}
    for method, by_seed in finals.items():
        for seed, ckpt in by_seed.items():
            scores = evaluate(ckpt, texts, labels, teacher["logits"])
            scores.pop("logits")
            results["students"].setdefault(method, {})[seed] = {"checkpoint": ckpt, **scores}
    results["footprint"] = {"teacher": footprint(teacher_ckpt, texts[:100], "export_teacher"),
                            "student": footprint(finals["fresh"][args.seeds[0]], texts[:100], "export_student")}
    results["minutes"] = (time.perf_counter() - started) / 60
    with open("results.json", "w") as handle:
        json.dump(results, handle, indent=2)
    print_table(results)


def print_table(results: dict) -> None:
    def mean_sd(values):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    t = results["teacher"]
    print(f"\nPhraseBank AllAgree test split ({results['test_size']} sentences); students: mean ± sd over seeds "
          f"{results['settings']['seeds']}")
    print("| model | test acc | test macro-F1 | KL(teacher ‖ student) | per seed (acc / F1) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| teacher (4×192, from scratch) | {t['acc']:.4f} | {t['macro_f1']:.4f} | 0 | |")
    for method, by_seed in results["students"].items():
        rows = list(by_seed.values())
        seeds = ", ".join(f"{r['acc']:.3f} / {r['macro_f1']:.3f}" for r in rows)
        print(f"| {method} | {mean_sd([r['acc'] for r in rows])} | {mean_sd([r['macro_f1'] for r in rows])} | "
              f"{mean_sd([r['kl_teacher'] for r in rows])} | {seeds} |")
    print("\nrow-normalised confusion (rows = true negative, neutral, positive):")
    print(f"  teacher: {t['confusion_normalized']}")
    for method, by_seed in results["students"].items():
        first = next(iter(by_seed.values()))
        print(f"  {method} (seed {next(iter(by_seed))}): {first['confusion_normalized']}")
    f = results["footprint"]
    print("\n| | parameters | exported size (MB) | latency per doc, batch 1 (ms) |\n| --- | --- | --- | --- |")
    for name in ("teacher", "student"):
        print(f"| {name} | {f[name]['parameters']:,} | {f[name]['size_mb']:.1f} | {f[name]['latency_ms_per_doc']:.2f} |")
    ratio = f["teacher"]["latency_ms_per_doc"] / f["student"]["latency_ms_per_doc"]
    print(f"student is {ratio:.1f}× faster per document, "
          f"{f['teacher']['parameters'] / f['student']['parameters']:.1f}× fewer parameters; "
          f"pipeline took {results['minutes']:.1f} min")


if __name__ == "__main__":
    main()
