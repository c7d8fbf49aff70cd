"""A small predictor for deployment: texts in, labels and probabilities out — no Lightning, no data module.

    from finlight.deploy.predictor import Predictor
    predictor = Predictor.load("onnx/X", backend="onnx-int8")     # or an exported Hugging Face directory
    predictor.predict(["Profit rose sharply.", "The plant will close."])

It serves a Hugging Face directory (``python -m finlight export``; torch backend) or an ONNX directory
(``python -m finlight export-onnx``; onnxruntime, torch not needed). Batches are formed longest-first and
padded to their own longest text (the same sorted dynamic padding as finlight's evaluation loaders), and
results come back in input order. ``python -m finlight.deploy.predictor DIR "text" …`` prints JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from finlight.errors import FinlightError

Backend = Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class Predictor:
    """Sorted, dynamically padded batches through one backend ``run(input_ids, attention_mask) → logits``."""

    def __init__(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], tokenizer, label_names: Sequence[str],
                 max_length: int = 512, batch_size: int = 32, backend: str = "custom", sort_by_length: bool = True,
                 backend_reason: str = ""):
        if batch_size < 1:
            raise FinlightError(f"predictor: batch_size={batch_size} must be >= 1")
        self.run = run
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length
        self.batch_size = batch_size
        self.backend = backend
        self.backend_reason = backend_reason  # why ``auto`` chose it ("" when set explicitly)
        self.sort_by_length = sort_by_length  # False: batches in input order (for comparisons only)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.encode = token_id_encoder(tokenizer, max_length)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str, backend: Backend = "auto", batch_size: int = 32, num_threads: Optional[int] = None,
             max_length: Optional[int] = None, device: str = "cpu", sort_by_length: bool = True,
             first_token_last_layer: bool = True) -> "Predictor":
        """``auto``: ONNX fp32 when the folder has ``model.onnx``, else torch under bf16 autocast where the device
        runs it faster and plain fp32 elsewhere — the rule of training's ``precision: auto``
        (`finlight.core.precision.choose_precision`; ``backend_reason`` says why). ``torch-bf16``: torch under bf16
        autocast (fp32 weights; faster on AVX-512-BF16 / AMX CPUs and bf16 GPUs, much slower on AVX2-only CPUs).
        ``first_token_last_layer`` (torch backends): a BERT's last layer for [CLS] only (`finlight.core.first_token`;
        same logits, fewer FLOPs, as export-onnx traces it); False computes the whole layer."""
        from transformers import AutoConfig, AutoTokenizer

        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise FinlightError(f"{path}: not an exported model folder (no config.json); use python -m finlight "
                                f"export or export-onnx first")
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        label_names = [config.id2label[i] for i in range(config.num_labels)]
        manifest = {}
        if os.path.isfile(os.path.join(path, "finlight_onnx.json")):
            with open(os.path.join(path, "finlight_onnx.json")) as handle:
                manifest = json.load(handle)
        reason = ""
        if backend == "auto" and os.path.isfile(os.path.join(path, "model.onnx")):
            backend, reason = "onnx", "the folder holds model.onnx"
        elif backend == "auto":
            backend, reason = auto_torch_backend(device)
        limit = getattr(config, "max_position_embeddings", None) or 512
        max_length = min(max_length or manifest.get("max_length") or limit, limit)
        if backend in ("torch", "torch-bf16"):
            run = _torch_runner(path, num_threads, device, bf16=backend == "torch-bf16",
                                first_token_last_layer=first_token_last_layer)
        elif backend in ("onnx", "onnx-int8"):
            name = "model.onnx" if backend == "onnx" else "model.int8.onnx"
            if not os.path.isfile(os.path.join(path, name)):
                hint = " (export with --int8)" if backend == "onnx-int8" else ""
                raise FinlightError(f"{path}: no {name}{hint}")
            run = _onnx_runner(os.path.join(path, name), num_threads)
        else:
            raise FinlightError(f"predictor: backend={backend!r}; use auto, torch, torch-bf16, onnx or onnx-int8")
        return cls(run, tokenizer, label_names, max_length, batch_size, backend, sort_by_length, reason)

    # ------------------------------------------------------------------ inference
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, k]`` class probabilities, in input order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.label_names)))
        ids = self.encode(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable") if self.sort_by_length else np.arange(len(ids))
        probs = np.empty((len(texts), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            attention_mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = ids[i]
                attention_mask[r, :len(ids[i])] = 1
            probs[rows] = softmax(np.asarray(self.run(input_ids, attention_mask), dtype=np.float32))
        return probs

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """``{"label", "score", "probs": {name: p}}`` per text, in input order."""
        probs = self.predict_proba(texts)
        return [{"label": self.label_names[int(p.argmax())], "score": float(p.max()),
                 "probs": {n: float(v) for n, v in zip(self.label_names, p)}} for p in probs]


def token_id_encoder(tokenizer, max_length: int) -> Callable[[Sequence[str]], list[list[int]]]:
    """``texts → token ids`` (special tokens added, truncated to ``max_length``, unpadded).

    For a fast tokenizer this calls its Rust ``Tokenizer.encode_batch_fast`` on a private copy set to truncate:
    the same ids as ``tokenizer(texts, truncation=True, max_length=...)`` (tested) without building offsets
    and a ``BatchEncoding`` — that Python-side work was a fifth of end-to-end ONNX INT8 inference time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer
        return lambda texts: tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right"))
    fast.no_padding()
    return lambda texts: [encoding.ids for encoding in fast.encode_batch_fast(list(texts))]


def auto_torch_backend(device: str = "cpu") -> tuple[str, str]:
    """``("torch-bf16" | "torch", reason)``: bf16 autocast where training's ``precision: auto`` would choose
    bf16-mixed on ``device`` (AVX-512 BF16 / AMX CPUs with AVX-512 kernels, bf16 GPUs; ``FINLIGHT_AUTO_PRECISION``
    pins it), fp32 elsewhere — on an AVX2-only CPU bf16 runs several times slower."""
    import torch

    from finlight.core.precision import AUTO, resolve_precision

    choice = resolve_precision(AUTO, accelerator=torch.device(device).type)
    return ("torch-bf16" if str(choice.precision).startswith("bf16") else "torch"), choice.reason


def _torch_runner(path: str, num_threads: Optional[int], device: str, bf16: bool = False,
                  first_token_last_layer: bool = True):
    import contextlib

    import torch
    from transformers import AutoModelForSequenceClassification

    from finlight.core.first_token import first_token_only
    from finlight.core.removals import removal_aware_load

    if num_threads:
        torch.set_num_threads(num_threads)
    with removal_aware_load(path):  # a pruned export's recorded attention / MLP removals
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        shortcut = first_token_only(model) if first_token_last_layer else contextlib.nullcontext()
        with torch.inference_mode(), autocast, shortcut:  # a BERT's last layer for [CLS] only
            return model(input_ids=torch.from_numpy(input_ids).to(device),
                         attention_mask=torch.from_numpy(attention_mask).to(device)).logits.float().cpu().numpy()

    return run


def _onnx_runner(path: str, num_threads: Optional[int]):
    try:
        import onnxruntime as ort
    except ImportError:
        raise FinlightError("the ONNX backend needs onnxruntime: pip install -e '.[onnx]'") from None
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return run


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m finlight.deploy.predictor", description="Classify texts.")
    parser.add_argument("model", help="exported folder (HF directory or export-onnx output)")
    parser.add_argument("texts", nargs="*", help="texts (default: one per line on stdin)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "torch-bf16", "onnx", "onnx-int8"])
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.load(args.model, args.backend, args.batch_size)
        if predictor.backend_reason:
            print(f"finlight: backend {predictor.backend} ({predictor.backend_reason})", file=sys.stderr)
        texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        for text, result in zip(texts, predictor.predict(texts)):
            print(json.dumps({"text": text, **result}, ensure_ascii=False))
    except FinlightError as err:
        print(f"finlight: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
