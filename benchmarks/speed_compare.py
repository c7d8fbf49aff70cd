"""Latency, throughput and test quality of several trained classifiers, timed in turns in one process.

    HF_HUB_OFFLINE=1 python benchmarks/speed_compare.py --texts logs/X/version_0/test_predictions.csv \
        --model tiny=checkpoints/X/version_0/best.ckpt --model dendritic=checkpoints/Y/version_0/best.ckpt \
        --model minilm=checkpoints/Z/version_0/best.ckpt --model tiny-int8=onnx_tiny/model.int8.onnx \
        --agree tiny-int8:tiny --positive_label toxic --json bench_out/speed.json

Each ``--model NAME=PATH`` is a finlight checkpoint (``.ckpt``: torch fp32 on CPU, rebuilt by
`finlight.core.restore.restore_from_checkpoint`, dendritic checkpoints included) or an ONNX graph (``.onnx``:
onnxruntime, tokenizer from its folder, as ``python -m finlight export-onnx`` writes it). The texts and labels are
those of a ``test_predictions.csv`` (what ``finlight test`` writes), so every model sees the same test split.

Model time only: texts are tokenized before the clock starts, into longest-first batches padded to their own
longest text (finlight's evaluation batching). Batch 1 times ``--bs1_texts`` single texts; larger batch sizes
time one pass over all texts. Each of ``--rounds`` rounds runs every model in turn (`_timing.interleaved`), so
load from other processes drifts over all of them alike; the figures are medians over rounds, ratios are against
the first ``--model``. onnxruntime runs without thread spinning, so no model's idle threads busy-wait through the
next model's turn. Quality (toxic-class F1, precision, recall at argmax and ROC AUC, with ``--positive_label``)
comes from one untimed pass; ``--agree A:B`` adds the share of texts on which A's argmax equals B's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import interleaved  # noqa: E402  (benchmarks/_timing.py)
from machine import cpu_line  # noqa: E402

from finlight.errors import FinlightError  # noqa: E402


def load_model(path: str, threads: int):
    """``(run(input_ids, attention_mask) -> logits, tokenizer, label_names, info)`` for a .ckpt or an .onnx."""
    if path.endswith(".ckpt"):
        import torch

        from finlight.core.restore import restore_from_checkpoint

        torch.set_num_threads(threads)
        model, tokenizer, label_names, _ = restore_from_checkpoint(path)
        model = model.float().eval()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), os.path.join(tmp, "weights.pt"))
            size = os.path.getsize(os.path.join(tmp, "weights.pt")) / 1e6

        def run(ids, mask):
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.float().numpy()

        info = {"backend": "torch fp32", "parameters": sum(p.numel() for p in model.parameters()), "size_mb": size}
        return run, tokenizer, label_names, info
    if path.endswith(".onnx"):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = os.path.dirname(path) or "."
        manifest_file = os.path.join(folder, "finlight_onnx.json")
        manifest = json.load(open(manifest_file)) if os.path.isfile(manifest_file) else {}
        label_names = manifest.get("label_names")
        if not label_names:
            config = json.load(open(os.path.join(folder, "config.json")))
            label_names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # no busy-waiting after a call: spinning onnxruntime threads would steal the cores from the next model of
        # the round (seen: torch timed 1.6x slower right after the ONNX graphs)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def run(ids, mask):
            return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]

        recipe = manifest.get("int8_recipe") if "int8" in os.path.basename(path) else None
        info = {"backend": f"onnxruntime {'int8 ' + recipe if recipe else 'fp32'}", "parameters": None,
                "size_mb": os.path.getsize(path) / 1e6}
        return run, AutoTokenizer.from_pretrained(folder), list(label_names), info
    raise FinlightError(f"--model {path}: expected a finlight checkpoint (.ckpt) or an ONNX graph (.onnx)")


def batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[tuple]:
    """Longest-first batches of token ids (int64), each padded to its own longest text, as (rows, ids, mask):
    the Predictor's batching (`finlight.deploy.onnx.length_sorted_feeds`), unpacked for the timing loops."""
    from finlight.deploy.onnx import length_sorted_feeds

    return [(feed["rows"].tolist(), feed["input_ids"], feed["attention_mask"])
            for feed in length_sorted_feeds(tokenizer, texts, max_length, batch_size)]


def quality(probs: np.ndarray, labels: np.ndarray, positive: int) -> dict:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    predicted = probs.argmax(1)
    y, p = labels == positive, predicted == positive
    return {"f1": float(f1_score(y, p, zero_division=0)), "precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)),
            "auroc": float(roc_auc_score(y, probs[:, positive])) if 0 < y.sum() < len(y) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", required=True, help="a finlight test_predictions.csv (text and label columns)")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH (.ckpt or .onnx); repeat")
    parser.add_argument("--agree", action="append", default=[], help="A:B — share of equal argmax; repeat")
    parser.add_argument("--positive_label", default=None, help="class for F1 / precision / recall / AUC")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--bs1_texts", type=int, default=100, help="texts timed one by one per round at batch 1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args()

    import csv

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with open(args.texts, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "text" not in rows[0] or "label" not in rows[0]:
        raise FinlightError(f"--texts {args.texts}: needs text and label columns (a finlight test_predictions.csv)")
    texts = [r["text"] for r in rows]
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not os.path.isfile(path):
            raise FinlightError(f"--model {spec}: expected NAME=PATH to an existing .ckpt or .onnx file")
        models[name] = dict(zip(("run", "tokenizer", "label_names", "info"), load_model(path, args.threads)), path=path)
    first = next(iter(models))
    names = models[first]["label_names"]
    if any(m["label_names"] != names for m in models.values()):
        raise FinlightError(f"the models disagree on label names: {[m['label_names'] for m in models.values()]}")
    labels = np.array([names.index(r["label"]) for r in rows])
    positive = names.index(args.positive_label) if args.positive_label else len(names) - 1

    results = {"cpu": cpu_line(), "load_average_before": os.getloadavg(), "threads": args.threads,
               "texts": len(texts), "max_length": args.max_length,
               "rounds": args.rounds, "timing": "model time only (pre-tokenized, longest-first, dynamic padding)",
               "models": {}}
    print(results["cpu"])
    predicted = {}
    for name, m in models.items():  # one untimed pass: quality and a warm-up
        probs = np.zeros((len(texts), len(names)))
        for chunk, x, mask in batches(m["tokenizer"], texts, 32, args.max_length):
            logits = m["run"](x, mask)
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs[chunk] = e / e.sum(1, keepdims=True)
        predicted[name] = probs.argmax(1)
        results["models"][name] = {"path": m["path"], **m["info"], "quality": quality(probs, labels, positive)}

    for bs in args.batch_sizes:
        subset = texts[:args.bs1_texts] if bs == 1 else texts
        prepared = {name: batches(m["tokenizer"], subset, bs, args.max_length) for name, m in models.items()}

        def one_pass(name):
            run = models[name]["run"]
            return lambda: [run(x, mask) for _, x, mask in prepared[name]]

        seconds = interleaved({name: one_pass(name) for name in models}, args.rounds, warmup=1)
        for name, times in seconds.items():
            median = statistics.median(times)
            entry = {"samples_per_s": len(subset) / median, "ms_per_call": 1000 * median / len(prepared[name]),
                     "round_seconds": times}
            results["models"][name].setdefault("batches", {})[str(bs)] = entry
    base = results["models"][first]["batches"]
    for name, r in results["models"].items():
        for bs, entry in r["batches"].items():
            entry["speedup_vs_first"] = entry["samples_per_s"] / base[bs]["samples_per_s"]
    results["load_average_after"] = os.getloadavg()
    results["agreement"] = {}
    for pair in args.agree:
        a, sep, b = pair.partition(":")
        if not sep or a not in models or b not in models:
            raise FinlightError(f"--agree {pair}: expected A:B with two --model names ({', '.join(models)})")
        results["agreement"][pair] = float(np.mean(predicted[a] == predicted[b]))

    print(f"load average (1, 5, 15 min) before {results['load_average_before']}, after {results['load_average_after']}; "
          f"{args.threads} threads, {len(texts)} texts (batch 1: the first {min(args.bs1_texts, len(texts))}), "
          f"median of {args.rounds} rounds, {results['timing']}")
    sizes = " | ".join(f"bs {bs} ms/call | bs {bs} samples/s (× {first})" for bs in args.batch_sizes)
    print(f"\n| model | backend | params | MB | F1 | P | R | AUC | {sizes} |")
    print("|" + "---|" * (8 + 2 * len(args.batch_sizes)))
    for name, r in results["models"].items():
        q = r["quality"]
        cells = " | ".join(f"{r['batches'][str(bs)]['ms_per_call']:.2f} | {r['batches'][str(bs)]['samples_per_s']:.0f} "
                           f"(×{r['batches'][str(bs)]['speedup_vs_first']:.2f})" for bs in args.batch_sizes)
        params = f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "—"
        auc = "—" if q["auroc"] is None else f"{q['auroc']:.3f}"
        print(f"| {name} | {r['backend']} | {params} | {r['size_mb']:.1f} | {q['f1']:.3f} | {q['precision']:.3f} | "
              f"{q['recall']:.3f} | {auc} | {cells} |")
    for pair, share in results["agreement"].items():
        print(f"argmax agreement {pair}: {share:.2%}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"→ {args.json}")


if __name__ == "__main__":
    main()
