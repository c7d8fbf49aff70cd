"""Training / inference throughput, padding efficiency and peak memory of a from-scratch bert-tiny-shaped model.

    python benchmarks/throughput.py [--data ../shared/data/financial_phrasebank/Sentences_AllAgree.txt]

finlight's batching (length-grouped training batches, longest-first evaluation batches, dynamic padding) is
measured against the naive reference in the same run: random batches padded to ``max_length``. Targets
(issue 2): padding efficiency ≥ 0.85 on PhraseBank, inference ≥ 3,000 samples/s on 2 cores.

Inference is timed on the same longest-first, dynamically padded batches three ways: the torch model (what
``python -m finlight test/predict`` runs), the ONNX Runtime graph that ``python -m finlight export-onnx`` writes
(fp32, fused), and end to end through `finlight.deploy.predictor.Predictor` on that graph (texts in, tokenization
included). The naive reference is the torch model on random batches padded to ``max_length``.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from finlight.core import ClassificationDataModule
from finlight.core.data.tokenization import LengthGroupedSampler, PaddingCollator, SortedSampler, padding_efficiency
from finlight.core.backbone import ScratchConfig, build_from_scratch

from _timing import items_per_second  # benchmarks/_timing.py

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/financial_phrasebank/Sentences_AllAgree.txt"


class FixedPadCollator(PaddingCollator):
    """The reference: every batch padded to max_length (what a static-shape pipeline does)."""

    def __init__(self, pad_token_id: int, width: int):
        super().__init__(pad_token_id)
        self.width = width

    def __call__(self, items):
        items = items + [{"input_ids": [self.pad_token_id] * self.width, "index": -1, "labels": 0}]
        batch = super().__call__(items)
        return {k: v[:-1] for k, v in batch.items()}


def batches_of(sampler_order, batch_size):
    order = list(sampler_order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def time_inference(model, loader, repeats: int) -> float:
    """Samples/s of ``repeats`` passes over ``loader`` (collation included), after one warm-up pass."""
    model.eval()

    def one_pass() -> int:
        n = 0
        for batch in loader:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            n += len(batch["input_ids"])
        return n

    with torch.inference_mode():
        return items_per_second(one_pass, repeats, warmup=1)


def time_onnx(session, batches, repeats: int) -> float:
    """ORT on the same batches as numpy arrays (collation done before timing, as for the torch loaders' reuse)."""
    feeds = [{"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()} for b in batches]

    def one_pass() -> int:
        for feed in feeds:
            session.run(["logits"], feed)
        return sum(len(feed["input_ids"]) for feed in feeds)

    return items_per_second(one_pass, repeats, warmup=1)


def time_predictor(predictor, texts, repeats: int) -> float:
    predictor.predict_proba(texts[:64])  # warm-up
    return items_per_second(lambda: len(predictor.predict_proba(texts)), repeats)


def onnx_export_of(model, tokenizer, max_length: int, workdir: str) -> str:
    """``export-onnx``'s artefact for this model: save it as a Hugging Face folder, export (checked vs torch)."""
    from finlight.deploy.onnx import export_onnx

    model.save_pretrained(f"{workdir}/hf")
    tokenizer.save_pretrained(f"{workdir}/hf")
    export_onnx(f"{workdir}/hf", f"{workdir}/onnx", max_length=max_length)
    return f"{workdir}/onnx"


def time_training(model, loader, steps: int) -> float:
    """Samples/s of ``steps`` optimizer steps (fetching the batch included), after 3 warm-up steps."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forever():
        while True:
            yield from loader

    batches = forever()

    def step() -> int:
        batch = next(batches)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(batch["input_ids"])

    return items_per_second(step, steps, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train_steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--no_onnx", action="store_true", help="skip the ONNX Runtime figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    dm = ClassificationDataModule(path=args.data, max_length=args.max_length, batch_size=args.batch_size)
    dm.setup("fit")
    model, tokenizer = build_from_scratch(ScratchConfig(), dm.label_names, dm.train_texts)
    dm.tokenizer = tokenizer
    texts = [r.text for split in ("train", "val", "test") for r in dm.splits[split]]
    train = dm.dataset("train")
    lengths = train.lengths
    pad = tokenizer.pad_token_id
    rng = np.random.default_rng(0)

    grouped = batches_of(LengthGroupedSampler(lengths, args.batch_size, seed=0), args.batch_size)
    random_order = batches_of(rng.permutation(len(lengths)), args.batch_size)
    fixed_eff = sum(lengths) / (len(lengths) * args.max_length)
    eff = {"length_grouped": padding_efficiency(lengths, grouped), "random_dynamic": padding_efficiency(lengths, random_order),
           "random_fixed_max_length": fixed_eff}

    from finlight.core.data.tokenization import EncodedDataset, encode_texts

    all_ids, _ = encode_texts(tokenizer, texts, args.max_length)
    everything = EncodedDataset(all_ids, [0] * len(all_ids))
    sorted_eff = padding_efficiency(everything.lengths, batches_of(SortedSampler(everything.lengths), args.batch_size))
    eff["eval_sorted"] = sorted_eff

    finlight_eval = DataLoader(everything, batch_size=args.batch_size, sampler=SortedSampler(everything.lengths),
                               collate_fn=PaddingCollator(pad))
    naive_eval = DataLoader(everything, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0), collate_fn=FixedPadCollator(pad, args.max_length))
    infer = {"finlight_sorted_dynamic": time_inference(model, finlight_eval, args.repeats),
             "naive_fixed_padding": time_inference(model, naive_eval, 1)}
    if not args.no_onnx:
        import tempfile

        import onnxruntime as ort

        from finlight.deploy.predictor import Predictor

        with tempfile.TemporaryDirectory() as workdir:
            onnx_dir = onnx_export_of(model, tokenizer, args.max_length, workdir)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(f"{onnx_dir}/model.onnx", options, providers=["CPUExecutionProvider"])
            infer["onnx_runtime_sorted_dynamic"] = time_onnx(session, list(finlight_eval), args.repeats)
            predictor = Predictor.load(onnx_dir, "onnx", batch_size=args.batch_size, num_threads=args.threads,
                                       max_length=args.max_length)
            infer["predictor_onnx_end_to_end"] = time_predictor(predictor, texts, args.repeats)
        torch.set_num_threads(args.threads)

    grouped_loader = DataLoader(train, batch_size=args.batch_size, sampler=LengthGroupedSampler(lengths, args.batch_size),
                                collate_fn=PaddingCollator(pad))
    naive_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(0), collate_fn=FixedPadCollator(pad, args.max_length))
    training = {"finlight_length_grouped": time_training(model, grouped_loader, args.train_steps),
                "naive_fixed_padding": time_training(model, naive_loader, args.train_steps)}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    figures = {"data": args.data, "examples": len(texts), "threads": args.threads, "batch_size": args.batch_size,
               "max_length": args.max_length, "parameters": sum(p.numel() for p in model.parameters()),
               "padding_efficiency": eff, "inference_samples_per_s": infer, "training_samples_per_s": training,
               "peak_rss_mb": peak_rss_mb}
    print(f"bert-tiny shape from scratch ({figures['parameters'] / 1e6:.2f} M params), {len(texts)} PhraseBank texts, "
          f"batch {args.batch_size}, max_length {args.max_length}, {args.threads} threads")
    print(f"padding efficiency   train length-grouped {eff['length_grouped']:.3f} | random dynamic "
          f"{eff['random_dynamic']:.3f} | fixed max_length {fixed_eff:.3f} | eval sorted {sorted_eff:.3f}")
    naive = infer["naive_fixed_padding"]
    print(f"inference samples/s  finlight torch {infer['finlight_sorted_dynamic']:,.0f} | naive {naive:,.0f}"
          f" | ratio {infer['finlight_sorted_dynamic'] / naive:.2f}x")
    if "onnx_runtime_sorted_dynamic" in infer:
        print(f"                     export-onnx graph, ONNX Runtime {infer['onnx_runtime_sorted_dynamic']:,.0f} "
              f"({infer['onnx_runtime_sorted_dynamic'] / naive:.2f}x) | Predictor end to end, tokenization "
              f"included {infer['predictor_onnx_end_to_end']:,.0f} ({infer['predictor_onnx_end_to_end'] / naive:.2f}x)")
    print(f"training samples/s   finlight {training['finlight_length_grouped']:,.0f} | naive "
          f"{training['naive_fixed_padding']:,.0f} | ratio "
          f"{training['finlight_length_grouped'] / training['naive_fixed_padding']:.2f}x")
    print(f"peak RSS             {peak_rss_mb:,.0f} MB")
    verdict = {path: "PASS" if infer[key] >= 3000 else "FAIL" for path, key in
               (("torch", "finlight_sorted_dynamic"), ("ONNX Runtime", "onnx_runtime_sorted_dynamic"),
                ("Predictor end to end", "predictor_onnx_end_to_end")) if key in infer}
    print(f"targets              padding ≥ 0.85: {'PASS' if eff['length_grouped'] >= 0.85 else 'FAIL'} | "
          f"inference ≥ 3,000/s: " + ", ".join(f"{path} {v}" for path, v in verdict.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
