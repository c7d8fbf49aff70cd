"""Compression report: accuracy, macro-F1, size, parameters, throughput and peak memory of model variants.

    HF_HUB_OFFLINE=1 python benchmarks/compression_report.py --config configs/sapling_bert_tiny_phrasebank.yaml \
        --variant full=checkpoints/sapling_bert_tiny_phrasebank/version_0/epoch01-....ckpt \
        --variant sapling_2of6=checkpoints/sapling_bert_tiny_phrasebank/version_0/last.ckpt \
        --int8 full --int8 sapling_2of6 --out bench_out/compression

A variant is a finlight checkpoint (``.ckpt``) or an exported Hugging Face directory; ``--int8 NAME`` adds
``NAME+int8`` (`finlight.quantize.dynamic_int8`). Every variant is scored once on the **test** split of
``--config``'s data section (the split the runs were trained with: same path, ratios, seed) — selection
happened on validation during training. Each variant is measured in its own fresh process (spawned), so
its peak RSS is its own: ``peak_rss_mb`` is the process peak (interpreter + torch included) and
``rss_model_mb`` the growth over the process after imports. Throughput is model time over the whole test
set in sorted, dynamically padded batches after one warm-up pass (tokenization excluded): samples/s and
real (non-padding) tokens/s. Writes ``report.md``, ``report.csv``, ``results.json`` and ``pareto.png``
(size on disk vs accuracy, the Pareto front drawn) under ``--out``.

GPU baselines (bitsandbytes 4/8-bit, GPTQ, QLoRA) are not measured here: see the README section
"Structural compression" for their configs.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import resource
import sys
import time
from typing import Optional, Sequence

COLUMNS = ("variant", "layers", "acc", "macro_f1", "size_mb", "params", "samples_per_s", "tokens_per_s",
           "peak_rss_mb", "rss_model_mb")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller or equal size and higher or equal accuracy, one
    of them strictly. Ordered by size."""
    front = []
    for i, (size, acc) in enumerate(points):
        dominated = any((s <= size and a >= acc) and (s < size or a > acc) for j, (s, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_variant(source: str):
    """(model in eval mode, tokenizer) from a finlight checkpoint or a Hugging Face directory."""
    if os.path.isdir(source):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(source)
    from finlight.models.restore import restore_from_checkpoint

    model, tokenizer, _, _ = restore_from_checkpoint(source)
    return model.eval(), tokenizer


def measure(source: str, int8: bool, texts: list[str], labels: list[int], max_length: int, batch_size: int,
            threads: Optional[int]) -> dict:
    """Scores, size and speed of one variant (call it in a fresh process for an honest peak RSS)."""
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(source, int8, texts, labels, max_length, batch_size)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(source, int8, texts, labels, max_length, batch_size) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from finlight.quantize import dynamic_int8, saved_size_bytes
    from finlight.surgery import num_layers

    after_imports = _current_rss_mb()
    model, tokenizer = load_variant(source)
    params = sum(p.numel() for p in model.parameters())
    layers = num_layers(model)
    if int8:
        model = dynamic_int8(model)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        batches.append((rows, encoded["input_ids"], encoded["attention_mask"]))
    predicted = np.zeros(len(texts), dtype=np.int64)
    with torch.inference_mode():
        for _, ids, mask in batches:  # warm-up pass
            model(input_ids=ids, attention_mask=mask)
        start = time.perf_counter()
        for rows, ids, mask in batches:
            predicted[rows] = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy()
        seconds = time.perf_counter() - start
    tokens = sum(int(mask.sum()) for _, _, mask in batches)
    return {"layers": layers, "acc": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro")),
            "size_mb": saved_size_bytes(model) / 2**20, "params": params,
            "samples_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _rss_mb(), "rss_model_mb": _current_rss_mb() - after_imports}


def _measure_in_child(args: tuple, queue) -> None:
    try:
        queue.put(("ok", measure(*args)))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which stops with it
        queue.put(("error", f"{type(err).__name__}: {err}"))


def measure_isolated(*args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure_in_child, args=(args, queue))
    child.start()
    status, value = queue.get()
    child.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def test_split(config_path: str) -> tuple[list[str], list[int], int]:
    """Texts, label indices and max_length of the test split that ``config_path``'s data section makes."""
    import yaml

    from finlight.data import ClassificationDataModule

    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    init_args = dict(config["data"]["init_args"])
    datamodule = ClassificationDataModule(**init_args)
    datamodule.setup("test")
    return ([r.text for r in datamodule.splits["test"]], list(datamodule.labels["test"]),
            int(init_args.get("max_length", 128)))


def write_report(rows: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(out, "report.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)

    def fmt(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if value < 1 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in COLUMNS) + " |" for r in rows]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    points = [(r["size_mb"], r["acc"]) for r in rows]
    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter([p[0] for p in points], [p[1] for p in points])
    for row, (x, y) in zip(rows, points):
        axes.annotate(row["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="gray", label="Pareto front")
    axes.set_xlabel("size on disk (MB)")
    axes.set_ylabel("test accuracy")
    axes.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(out, "pareto.png"), dpi=120)
    plt.close(figure)
    print("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the YAML whose data section gives the test split")
    parser.add_argument("--variant", action="append", required=True, help="NAME=CKPT_OR_HF_DIR (repeat)")
    parser.add_argument("--int8", action="append", default=[], help="NAME of a variant to also run as dynamic INT8")
    parser.add_argument("--out", default="bench_out/compression")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--in_process", action="store_true",
                        help="measure in this process (faster; peak_rss_mb is then the running peak of all variants)")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant)
    unknown = [n for n in args.int8 if n not in variants]
    if unknown:
        parser.error(f"--int8 {unknown[0]}: no --variant with that name")
    texts, labels, max_length = test_split(args.config)
    rows = []
    for name, source in variants.items():
        for int8 in (False, True) if name in args.int8 else (False,):
            run = measure if args.in_process else measure_isolated
            result = run(source, int8, texts, labels, max_length, args.batch_size, args.threads)
            rows.append({"variant": name + ("+int8" if int8 else ""), **result})
    write_report(rows, args.out)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
