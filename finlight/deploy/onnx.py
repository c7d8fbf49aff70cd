"""``python -m finlight export-onnx --model exported/X --output_dir onnx/X [--int8]``: ONNX for deployment.

``torch.onnx.export`` (optimum-onnx cannot live beside transformers 5) with dynamic batch and sequence axes,
then a check: onnxruntime's logits must match torch's within ``--atol`` on padded batches of other shapes than
the one traced, or the export fails. ``--int8`` adds ``model.int8.onnx`` (onnxruntime dynamic quantisation of
the MatMul/Gemm weights), reported with its logit error and argmax agreement against torch. ``--optimize``
(the default for BERT-family models; ``--no_optimize`` turns it off) exports eager attention through the
TorchScript exporter and runs onnxruntime's transformer optimizer on it: one fused Attention kernel per layer,
fused embeddings + LayerNorm, residual + LayerNorm and bias + GELU; the fused graph goes through the same
check. The output folder also holds the tokenizer, ``config.json`` (label names) and ``finlight_onnx.json`` (the checks), so
`finlight.deploy.predictor.Predictor` serves it without Lightning or torch.

The source is a Hugging Face directory (``python -m finlight export``) or a finlight checkpoint (``.ckpt``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from finlight.errors import FinlightError

log = logging.getLogger("finlight.onnx")
MANIFEST = "finlight_onnx.json"
BERT_FAMILY = ("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "deberta", "mpnet")
# Sentences of varied length written for this check (padding inside batches is part of what is checked).
CHECK_TEXTS = [
    "Profit rose.",
    "The company raised its full-year guidance after strong orders in the third quarter.",
    "Net sales decreased by 12 % to EUR 31.5 million, and the operating loss widened compared with a year earlier.",
    "Shares were unchanged.",
    "The board will propose a dividend of EUR 0.40 per share for the financial year, up from EUR 0.35 a year ago.",
    "Layoffs are expected.",
]


class LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) → logits``: the graph a deployed classifier needs, nothing else."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@contextlib.contextmanager
def _quiet():
    """The exporters and the quantiser log progress and advice (torchvision absent, "consider pre-processing")
    at WARNING on the root and torch loggers; keep the console to finlight's own summary."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_source(source: str, trust_remote_code: bool = False):
    """A classifier and its tokenizer from a Hugging Face directory or a finlight checkpoint."""
    if os.path.isdir(source):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        import finlight.prune.surgery  # noqa: F401  (builds recorded attention / MLP removals)

        if not os.path.isfile(os.path.join(source, "config.json")):
            raise FinlightError(f"{source}: no config.json; give a Hugging Face model directory "
                                f"(python -m finlight export) or a .ckpt file")
        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32,
                                                                   trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source)
        return model, tokenizer
    from finlight.core.restore import restore_from_checkpoint

    model, tokenizer, _, _ = restore_from_checkpoint(source, trust_remote_code)
    return model, tokenizer


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}


def _torch_logits(wrapper: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return wrapper(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])).numpy()


def _session(path: str):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def compare_with_torch(wrapper: torch.nn.Module, onnx_path: str, tokenizer, texts: Sequence[str],
                       max_length: int) -> dict:
    """Logit error and argmax agreement of an ONNX file against torch, on the whole text list as one padded
    batch, on single texts (batch 1, unpadded) and on pairs (other batch and sequence sizes than traced)."""
    session = _session(onnx_path)
    batches = [list(texts)] + [[t] for t in texts] + [list(texts[i:i + 2]) for i in range(0, len(texts), 2)]
    worst, agree, total = 0.0, 0, 0
    for chunk in batches:
        batch = _encode(tokenizer, chunk, max_length)
        expected = _torch_logits(wrapper, batch)
        got = session.run(["logits"], batch)[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        agree += int(np.sum(got.argmax(-1) == expected.argmax(-1)))
        total += len(chunk)
    return {"max_abs_diff": worst, "argmax_agreement": agree / total, "examples": total, "batches": len(batches)}


def export_onnx(source: str, output_dir: str, int8: bool = False, opset: int = 18, atol: float = 1e-4,
                max_length: Optional[int] = None, check_texts: Optional[Sequence[str]] = None,
                dynamo: bool = True, trust_remote_code: bool = False, optimize: Optional[bool] = None) -> dict:
    """Export, check, optionally quantise; returns (and writes) the manifest.

    ``optimize=None`` (auto) runs onnxruntime's transformer optimizer where it applies (BERT-family graphs from
    the dynamo exporter): the fused graph is the faster deployment artefact and passes the same check."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FinlightError(f"{output_dir}: exists and is not empty; choose a new --output_dir")
    model, tokenizer = load_source(source, trust_remote_code)
    has_dendrites = any(type(m).__name__ == "PAINeuronModule" for m in model.modules())
    if has_dendrites and dynamo:
        # perforatedai's dendrite modules branch in Python on their own state: torch.export fails on them
        log.info("export-onnx: the model has perforatedai dendrites; using the TorchScript exporter")
        dynamo = False
    if optimize is None:
        optimize = model.config.model_type in BERT_FAMILY and not has_dendrites
    if optimize:
        _require_bert_family(model.config.model_type)
        # onnxruntime's fusion patterns (one Attention kernel per layer, EmbedLayerNormalization) match the
        # TorchScript graph of eager attention; an SDPA or torch.export graph only gets LayerNorm/GELU fusions
        model.set_attn_implementation("eager")
        dynamo = False
    wrapper = LogitsOnly(model).eval()  # the exporter restores the wrapper's mode recursively: it must be eval
    positions = getattr(model.config, "max_position_embeddings", 512) or 512
    max_length = min(max_length or positions, positions)
    texts = list(check_texts or CHECK_TEXTS)
    if len(texts) < 2:
        raise FinlightError("export-onnx: need at least 2 check texts (a padded batch is part of the check)")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.onnx")
    example = _encode(tokenizer, texts[:2], max_length)  # two texts of different length: a real padding mask
    sizes = sum(p.numel() * p.element_size() for p in model.parameters())
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with _quiet():
        kwargs = {"external_data": sizes > 1.8e9, "verbose": False} if dynamo else {}
        torch.onnx.export(wrapper, (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
                          path, input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=dynamo, **kwargs)
    fused = _optimize_graph(path, model.config) if optimize else None
    check = compare_with_torch(wrapper, path, tokenizer, texts, max_length)
    if check["max_abs_diff"] > atol:
        raise FinlightError(f"{path}: ONNX logits differ from torch by {check['max_abs_diff']:.2e} > atol {atol:g}; "
                            f"try --legacy_exporter or another --opset")
    manifest = {
        "source": source, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_length": max_length, "files": {"fp32": "model.onnx"}, "optimized": fused,
        "check": {"fp32": {**check, "atol": atol}},
    }
    if int8:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = os.path.join(output_dir, "model.int8.onnx")
        with _quiet():
            # fused contrib operators carry no type information for the quantizer: their outputs are float
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        manifest["files"]["int8"] = "model.int8.onnx"
        manifest["check"]["int8"] = compare_with_torch(wrapper, quantized, tokenizer, texts, max_length)
    model.config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    manifest["sizes_mb"] = {k: os.path.getsize(os.path.join(output_dir, f)) / 1e6 for k, f in manifest["files"].items()}
    with open(os.path.join(output_dir, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


def _require_bert_family(model_type: str) -> None:
    if model_type not in BERT_FAMILY:
        raise FinlightError(f"--optimize supports BERT-family encoders {BERT_FAMILY}, not {model_type!r}; export "
                            f"with --no_optimize")


def _optimize_graph(path: str, config) -> dict:
    """onnxruntime's transformer optimizer, in place; returns the counts of fused operators."""
    _require_bert_family(config.model_type)
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet():
            optimized = optimize_model(path, model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
            optimized.save_model_to_file(path)
    except Exception as err:  # the optimizer's shape inference rejects some graphs (e.g. TorchScript exports)
        raise FinlightError(f"{path}: onnxruntime's optimizer failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120]}); export with --no_optimize") from None
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):  # still correct, only slower: seen with onnxruntime 1.30 (fused from 1.32 on)
        import onnxruntime

        log.warning("%s: onnxruntime %s fused no Attention (fused: %s); the graph is correct but runs unfused "
                    "attention — onnxruntime >= 1.32 fuses it", path, onnxruntime.__version__, fused or "nothing")
    return fused


def export_onnx_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m finlight export-onnx",
                                     description="Export a classifier to ONNX (dynamic batch and sequence axes), "
                                                 "check it against torch, optionally quantise to INT8.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face directory (python -m finlight export …)")
    source.add_argument("--ckpt_path", help="a finlight checkpoint")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic INT8)")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnx - torch| logit difference")
    parser.add_argument("--max_length", type=int, default=None, help="tokens per text (default: the model's limit)")
    parser.add_argument("--check_texts", default=None, help="a text file, one sentence a line, to check on")
    optimize = parser.add_mutually_exclusive_group()
    optimize.add_argument("--optimize", action="store_true", default=None,
                          help="onnxruntime transformer optimizer (fused kernels) before the check; default: on for "
                               "BERT-family models exported with the dynamo exporter")
    optimize.add_argument("--no_optimize", dest="optimize", action="store_false", help="keep the exported graph as is")
    parser.add_argument("--legacy_exporter", action="store_true", help="TorchScript exporter instead of dynamo")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    texts = None
    if args.check_texts:
        if not os.path.isfile(args.check_texts):
            raise FinlightError(f"--check_texts {args.check_texts}: no such file")
        with open(args.check_texts, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    manifest = export_onnx(args.model or args.ckpt_path, args.output_dir, args.int8, args.opset, args.atol,
                           args.max_length, texts, not args.legacy_exporter, args.trust_remote_code, args.optimize)
    fp32 = manifest["check"]["fp32"]
    line = (f"finlight: exported to {args.output_dir}/model.onnx ({manifest['sizes_mb']['fp32']:.1f} MB; "
            f"max |onnx − torch| = {fp32['max_abs_diff']:.1e} on {fp32['examples']} texts)")
    if "int8" in manifest["check"]:
        q = manifest["check"]["int8"]
        line += (f"; model.int8.onnx ({manifest['sizes_mb']['int8']:.1f} MB; max |int8 − torch| = "
                 f"{q['max_abs_diff']:.1e}, argmax agreement {q['argmax_agreement']:.1%})")
    print(line)
