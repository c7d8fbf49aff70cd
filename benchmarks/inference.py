"""Inference speed and accuracy: finlight's predictor vs a plain ``transformers`` pipeline, and ONNX variants.

    HF_HUB_OFFLINE=1 python benchmarks/inference.py                      # trains a bert-tiny-shaped model first
    HF_HUB_OFFLINE=1 python benchmarks/inference.py --backbone minilm    # fine-tunes all-MiniLM-L6-v2 first
    HF_HUB_OFFLINE=1 python benchmarks/inference.py --model exported/X   # or any exported HF directory
    HF_HUB_OFFLINE=1 python benchmarks/inference.py --backbone minilm --quick   # 1 epoch, 400 texts: a check

Same process, same model weights, same texts (all of PhraseBank AllAgree for speed, its seeded 10 % test split
for accuracy), same torch / onnxruntime thread count, same max_length and batch size. Every variant runs
end to end: texts in, labels out (tokenization included). The reference is ``pipeline("text-classification")``
measured in this run; ratios are samples/s of a variant over the pipeline's. Tokenizers keep their default
(parallel) setting, as a user gets it: the Predictor tokenizes all texts in one Rust batch call, which spreads
over the cores; the pipeline tokenizes text by text. Each timing is the median of
``--repeats`` passes after one warm-up pass.

Variants: the pipeline; finlight `Predictor` with torch (longest-first batches, each padded to its own longest
text; a BERT's last layer for [CLS] only, `finlight.core.first_token`); the same without sorting (input-order
batches: shows what sorting alone buys); the same with the whole last layer (what the shortcut buys); ONNX fp32
(also traced for [CLS] only, as export-onnx does by default; a whole-last-layer fp32 graph as control); ONNX INT8
(export-onnx's default INT8 recipe, see finlight/deploy/onnx.py INT8_RECIPES), both from the graph onnxruntime's transformer optimizer fused (export-onnx's
default for BERT-family models); and both again from the unfused graph (``--no_optimize``); torch under bf16
autocast (``Predictor`` backend ``torch-bf16``: faster only on AVX-512-BF16 / AMX CPUs). Accuracy / macro-F1 on the
test split, and agreement with the torch labels. Each variant's achieved GFLOP/s (the encoder's forward FLOPs over
the batches as that variant pads them, over its time) is printed as a share of the matmul peak measured at the
start of the run (bf16 peak for the bf16 variant, fp32 peak for the others, INT8 included), with the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _timing import interleaved  # noqa: E402  (benchmarks/_timing.py)

PHRASEBANK = ROOT.parent / "shared" / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt"
LABELS = ["negative", "neutral", "positive"]

# bert-tiny shape (prajjwal1/bert-tiny: 2 layers, hidden 128, 2 heads, FFN 512), trained from scratch; or
# --backbone: a pretrained encoder fine-tuned (lr 1e-4)
SCRATCH_MODEL = """scratch: {hidden_size: 128, num_layers: 2, num_heads: 2, intermediate_size: 512, vocab_size: 8000}
    learning_rate: 1.0e-3"""
BACKBONE_MODEL = """backbone: "{backbone}"
    learning_rate: 1.0e-4"""
TRAIN_CONFIG = """\
seed_everything: 42
trainer: {{max_epochs: {epochs}, deterministic: true, enable_progress_bar: false, enable_model_summary: false,
          log_every_n_steps: 20}}
model:
  class_path: finlight.core.SequenceClassifier
  init_args:
    {model}
    warmup_ratio: 0.1
data:
  class_path: finlight.core.ClassificationDataModule
  init_args: {{path: "{data}", label_names: [negative, neutral, positive], split_ratios: [0.8, 0.1, 0.1],
              max_length: {max_length}, batch_size: 32}}
"""


def train_model(data: str, epochs: int, max_length: int, workdir: Path, backbone: Optional[str] = None) -> str:
    """fit (finlight CLI, in process) and export the best checkpoint as a Hugging Face directory."""
    from finlight.cli import run_cli
    from finlight.deploy.export import export_hf

    config = workdir / "bench_bert_tiny.yaml"
    model = BACKBONE_MODEL.format(backbone=backbone) if backbone else SCRATCH_MODEL
    config.write_text(TRAIN_CONFIG.format(epochs=epochs, data=data, max_length=max_length, model=model))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = run_cli(["fit", "--config", str(config)])
        best = cli.trainer.checkpoint_callback.best_model_path
        return export_hf(best, str(workdir / "hf"))
    finally:
        os.chdir(cwd)


def test_split(data: str, max_length: int):
    from finlight.core import ClassificationDataModule

    module = ClassificationDataModule(path=data, label_names=LABELS, split_ratios=(0.8, 0.1, 0.1), seed=42,
                                      max_length=max_length)
    module.setup()
    all_texts = [r.text for split in ("train", "val", "test") for r in module.splits[split]]
    return all_texts, [r.text for r in module.splits["test"]], module.labels["test"]


def timed_rounds(variants: dict, texts, repeats: int) -> dict[str, float]:
    """Median seconds per variant over ``repeats`` rounds; each round runs every variant once, in turn, so
    that load from other processes drifts over all variants alike instead of penalising whichever ran last."""
    for fn in variants.values():
        fn(texts[:64])  # warm-up
    seconds = interleaved({name: (lambda fn=fn: fn(texts)) for name, fn in variants.items()}, repeats)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PHRASEBANK))
    parser.add_argument("--model", default=None, help="exported HF directory (default: train one here)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs when no --model is given")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime intra-op threads (1 by default: on a shared machine more "
                             "threads than free cores stall OpenMP barriers and every timing with them)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "inference"))
    parser.add_argument("--backbone", default=None,
                        help="fine-tune this pretrained encoder (an HF directory, or 'minilm' for the installed "
                             "all-MiniLM-L6-v2) instead of training bert-tiny from scratch")
    parser.add_argument("--int8_recipe", default=None,
                        help="export-onnx's INT8 recipe for the INT8 variants (default: its default); smooth-* and "
                             "static-qdq calibrate on 512 earnings-call sentences (benchmarks/int8_smoothing.py's)")
    parser.add_argument("--int8_keep_fp32_from", default=None,
                        help="a benchmarks/int8_mixed.py result (mixed.json): keep its chosen nodes of --int8_recipe "
                             "in fp32 (fused graph only: the unfused variants are then skipped)")
    parser.add_argument("--quick", action="store_true",
                        help="a check of the script: 1 training epoch on a 400-sentence sample, 1 round, no "
                             "unfused graphs")
    args = parser.parse_args()
    if args.backbone == "minilm":
        from training import minilm_dir  # benchmarks/training.py

        args.backbone = minilm_dir()
    if args.quick:
        args.epochs, args.repeats = 1, 1

    import numpy as np
    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from finlight.deploy.onnx import DEFAULT_INT8, INT8_RECIPES, export_onnx
    from finlight.deploy.predictor import Predictor, auto_torch_backend
    from machine import ISA_LIMITS, encoder_forward_flops, print_header

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    peak = print_header(args.quick)
    out = Path(args.out).resolve()  # train_model runs in the work folder
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run_", dir=out))
    if not Path(args.data).is_file():
        sys.exit(f"benchmark: {args.data} not found (real data lives in ../shared/data)")
    if args.quick:  # train and score on a 400-sentence sample (benchmarks/training.py's)
        from training import quick_sample

        args.data = quick_sample(args.data, workdir)
    all_texts, texts, labels = test_split(args.data, args.max_length)
    model_dir = args.model or train_model(args.data, args.epochs, args.max_length, workdir, args.backbone)
    recipe = args.int8_recipe or DEFAULT_INT8
    if recipe not in INT8_RECIPES:
        sys.exit(f"--int8_recipe {recipe}: choose one of {', '.join(INT8_RECIPES)}")
    int8 = {"int8_recipe": recipe}
    if INT8_RECIPES[recipe].get("smooth") or INT8_RECIPES[recipe]["mode"] == "static":
        from int8_smoothing import ect_sets

        int8["calibration_texts"] = ect_sets()[0]
    keep = []
    if args.int8_keep_fp32_from:
        chosen = json.load(open(args.int8_keep_fp32_from))["recipes"].get(recipe)
        if chosen is None:
            sys.exit(f"--int8_keep_fp32_from {args.int8_keep_fp32_from}: has no result for {recipe}")
        keep = chosen["keep_fp32"]
    manifest = export_onnx(model_dir, str(workdir / "onnx"), int8=True, max_length=args.max_length,  # fused graph
                           int8_keep_fp32=keep, **int8)
    unfused = None if args.quick or keep else export_onnx(model_dir, str(workdir / "onnx_unfused"), int8=True,
                                                          max_length=args.max_length, optimize=False, **int8)
    whole = None if args.quick else export_onnx(model_dir, str(workdir / "onnx_whole"), max_length=args.max_length,
                                                first_token_last_layer=False)  # the fused fp32 graph, every position
    torch.set_num_threads(args.threads)  # training may have changed it

    hf_model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    hf_config = hf_model.config
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = [hf_model.config.id2label[i] for i in range(hf_model.config.num_labels)]
    pipe = pipeline("text-classification", model=hf_model, tokenizer=tokenizer, device=torch.device("cpu"))

    def pipeline_labels(batch):
        return [r["label"] for r in pipe(batch, batch_size=args.batch_size, truncation=True, max_length=args.max_length)]

    def predictor_labels(predictor):
        return lambda batch: [r["label"] for r in predictor.predict(batch)]

    int8_name = f"finlight Predictor, ONNX INT8 ({recipe}{f', {len(keep)} nodes fp32' if keep else ''})"
    load = dict(batch_size=args.batch_size, num_threads=args.threads, max_length=args.max_length)
    # torch bf16 is timed only where the Predictor's `auto` would take it: on AVX2 code paths a pass takes ~30 min
    auto_backend, auto_reason = auto_torch_backend()
    print(f"Predictor backend auto → {auto_backend} ({auto_reason})"
          + ("" if auto_backend == "torch-bf16" else "; torch bf16 not timed (slower here)"))
    if any(os.environ.get(name) for name in ISA_LIMITS):
        print("ISA limits hold torch / oneDNN / MKL only: onnxruntime's MLAS kernels still use every ISA the CPU has")
    variants = {
        "transformers pipeline (reference)": pipeline_labels,
        "finlight Predictor, torch": predictor_labels(Predictor.load(model_dir, "torch", **load)),
    }
    if auto_backend == "torch-bf16":
        variants["finlight Predictor, torch bf16"] = predictor_labels(Predictor.load(model_dir, "torch-bf16", **load))
    variants |= {
        "  same, batches unsorted": predictor_labels(Predictor.load(model_dir, "torch", sort_by_length=False, **load)),
        "  same, full last layer": predictor_labels(Predictor.load(model_dir, "torch", first_token_last_layer=False,
                                                                   **load)),
        "finlight Predictor, ONNX fp32": predictor_labels(Predictor.load(str(workdir / "onnx"), "onnx", **load)),
        int8_name: predictor_labels(Predictor.load(str(workdir / "onnx"), "onnx-int8", **load)),
    }
    if whole is not None:
        variants["  ONNX fp32, whole last layer"] = predictor_labels(
            Predictor.load(str(workdir / "onnx_whole"), "onnx", **load))
    if unfused is not None:
        variants["  ONNX fp32, unfused graph"] = predictor_labels(
            Predictor.load(str(workdir / "onnx_unfused"), "onnx", **load))
        variants["  ONNX INT8, unfused graph"] = predictor_labels(
            Predictor.load(str(workdir / "onnx_unfused"), "onnx-int8", **load))
    # FLOPs as each variant pads: the pipeline and the unsorted Predictor batch in input order, the rest sorted
    lengths = [len(ids) for ids in tokenizer(all_texts, truncation=True, max_length=args.max_length)["input_ids"]]
    sorted_lengths = sorted(lengths, reverse=True)
    chunks = {"input order": lengths, "sorted": sorted_lengths}
    # the torch Predictor computes a BERT's last layer for [CLS] only (finlight.core.first_token): fewer FLOPs
    from finlight.core.first_token import target_layer

    shortcut = target_layer(hf_model) is not None
    flops = {(kind, first): encoder_forward_flops(hf_config, [max(ls[i:i + args.batch_size])
                                                              for i in range(0, len(ls), args.batch_size)
                                                              for _ in range(len(ls[i:i + args.batch_size]))],
                                                  first_token_last_layer=first)
             for kind, ls in chunks.items() for first in (False, shortcut)}

    def runs_first_token(name: str) -> bool:
        """Whether a variant computes the last layer for [CLS] only: the torch Predictor and the default ONNX
        export do, the pipeline and the two whole-layer controls do not."""
        if not shortcut or "pipeline" in name or "last layer" in name:
            return False
        return bool(manifest["first_token_last_layer"]) if "ONNX" in name else True

    seconds = timed_rounds(variants, all_texts, args.repeats)
    results = {name: {"samples_per_s": len(all_texts) / seconds[name], "seconds": seconds[name],
                      "predicted": fn(texts)} for name, fn in variants.items()}
    reference = results["transformers pipeline (reference)"]
    torch_labels = results["finlight Predictor, torch"]["predicted"]
    truth = [names[i] for i in labels]
    shape = f"{hf_config.num_hidden_layers}×{hf_config.hidden_size} {hf_config.model_type}"
    print(f"\n{shape} ({sum(p.numel() for p in hf_model.parameters()) / 1e6:.2f} M params, {model_dir}), "
          f"{len(all_texts)} PhraseBank AllAgree texts timed, {len(texts)}-text test split scored; "
          f"{args.threads} thread(s), batch {args.batch_size}, max_length {args.max_length}, median of {args.repeats} interleaved rounds\n")
    width = max(36, *(len(name) for name in results))
    print(f"{'variant':{width}s} {'samples/s':>10s} {'× pipeline':>11s} {'test acc':>9s} {'macro-F1':>9s} {'= torch':>8s} "
          f"{'GFLOP/s':>8s} {'% peak':>7s}")
    table = {}
    for name, r in results.items():
        accuracy = float(np.mean([p == t for p, t in zip(r["predicted"], truth)]))
        macro = float(f1_score(truth, r["predicted"], labels=names, average="macro"))
        agreement = float(np.mean([p == t for p, t in zip(r["predicted"], torch_labels)]))
        ratio = r["samples_per_s"] / reference["samples_per_s"]
        order = "input order" if ("pipeline" in name or "unsorted" in name) else "sorted"
        gflops = flops[order, runs_first_token(name)] / r["seconds"] / 1e9
        share = gflops / peak["bf16" if "bf16" in name else "fp32"]
        print(f"{name:{width}s} {r['samples_per_s']:10.0f} {ratio:10.2f}× {accuracy:9.4f} {macro:9.4f} {agreement:8.1%} "
              f"{gflops:8.1f} {100 * share:6.0f}%")
        table[name.strip()] = {"samples_per_s": r["samples_per_s"], "ratio_vs_pipeline": ratio,
                               "test_accuracy": accuracy, "test_macro_f1": macro, "agreement_with_torch": agreement,
                               "gflops": gflops, "peak_share": share}
    print(f"\nONNX check: max |fp32 − torch| = {manifest['check']['fp32']['max_abs_diff']:.1e}, "
          f"max |int8 − torch| = {manifest['check']['int8']['max_abs_diff']:.3f}; sizes (MB): "
          + ", ".join(f"{k} {v:.2f}" for k, v in manifest["sizes_mb"].items())
          + f"; ORT optimizer fused: {manifest['optimized']}")
    with open(out / "inference.json", "w") as handle:
        json.dump({"setup": vars(args) | {"model_dir": model_dir, "timed_texts": len(all_texts),
                                          "test_texts": len(texts)}, "peak_gflops": peak, "results": table,
                   "onnx": manifest, "onnx_unfused": unfused}, handle, indent=2)
    print(f"→ {out / 'inference.json'}")


if __name__ == "__main__":
    main()
