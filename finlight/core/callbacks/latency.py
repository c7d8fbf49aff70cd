"""Latency profiler: per-sample latency at batch 1, throughput at larger batches, size and memory.

After ``test`` (enable it in YAML, see the README), or on demand with `profile_model`. Figures are model time
only — texts are tokenized and padded before the clock starts (``benchmarks/inference.py`` measures end to end,
tokenization included). Timed calls follow ``warmup`` untimed ones and are synchronised on CUDA, so each
measured interval covers the whole kernel queue. An optional reference backbone (e.g. ``bert-base-uncased``)
is measured in the same process on the same texts, which gives an honest speed-up ratio.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time
from typing import Callable, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt

from finlight.errors import FinlightError
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.callbacks")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _batches(tokenizer, texts: Sequence[str], batch_size: int, count: int, max_length: int, device) -> list:
    """``count`` batches of exactly ``batch_size`` texts (cycling through ``texts``), padded to their longest."""
    out = []
    for b in range(count):
        chunk = [texts[(b * batch_size + j) % len(texts)] for j in range(batch_size)]
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append((encoded["input_ids"].to(device), encoded["attention_mask"].to(device)))
    return out


def time_calls(forward: Callable, batches: list, warmup: int, device: torch.device) -> np.ndarray:
    """Seconds per call of ``forward(input_ids, attention_mask)`` over ``batches`` after ``warmup`` untimed calls."""
    with torch.inference_mode():
        for i in range(warmup):
            forward(*batches[i % len(batches)])
        _synchronize(device)
        seconds = []
        for input_ids, attention_mask in batches:
            start = time.perf_counter()
            forward(input_ids, attention_mask)
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def latency_summary(seconds: np.ndarray, batch_size: int) -> dict:
    """Per-call milliseconds (mean, std, p50, p95, min, max) and samples per second (all samples / all time)."""
    ms = seconds * 1000.0
    return {
        "batch_size": batch_size, "calls": len(ms),
        "ms_mean": float(ms.mean()), "ms_std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "ms_p50": float(np.percentile(ms, 50)), "ms_p95": float(np.percentile(ms, 95)),
        "ms_min": float(ms.min()), "ms_max": float(ms.max()),
        "ms_per_sample": float(ms.mean() / batch_size),
        "samples_per_s": float(batch_size * len(ms) / seconds.sum()),
    }


def model_footprint(model: torch.nn.Module) -> dict:
    """Parameter counts and the size of the saved weights (``save_pretrained`` when the model has it)."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(model, "save_pretrained"):
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model.save_pretrained(tmp)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        else:
            torch.save(model.state_dict(), os.path.join(tmp, "weights.pt"))
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(tmp) for f in files)
    return {"parameters": params, "trainable_parameters": trainable, "disk_size_mb": size / 1e6}


def profile_model(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_sizes: Sequence[int] = (1, 8, 32),
                  warmup: int = 5, iterations: int = 50, max_length: int = 128,
                  device: Optional[torch.device] = None, num_threads: Optional[int] = None,
                  footprint_of: Optional[torch.nn.Module] = None) -> dict:
    """Latency / throughput of ``model(input_ids, attention_mask)`` on ``texts``, plus its footprint.

    Each batch size gets ``iterations`` timed calls on batches of exactly that size taken in order from
    ``texts`` (cycled), padded to their own longest text. ``samples_per_s`` = all samples / all timed seconds,
    so it equals ``batch_size / mean latency``. ``num_threads`` sets torch's CPU threads while timing (on a
    shared machine, fewer threads than busy cores avoids OpenMP barrier stalls of 10-100×). Parameters and
    size are those of ``footprint_of`` (default: ``model``; a LightningModule passes its inner model).
    """
    if not texts:
        raise FinlightError("latency profiler: no texts to time (the test split is empty?)")
    if warmup < 0 or iterations < 2 or not batch_sizes or min(batch_sizes) < 1:
        raise FinlightError(f"latency profiler: need warmup >= 0, iterations >= 2 and batch sizes >= 1 "
                            f"(got warmup={warmup}, iterations={iterations}, batch_sizes={list(batch_sizes)})")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = {"batches": {}}
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        for b in batch_sizes:
            batches = _batches(tokenizer, texts, b, iterations, max_length, device)
            seconds = time_calls(model, batches, warmup, device)
            results["batches"][str(b)] = latency_summary(seconds, b)
        used_threads = torch.get_num_threads()
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    lengths = [sum(m) for m in tokenizer(list(texts[:1000]), truncation=True, max_length=max_length)["attention_mask"]]
    results.update(model_footprint(footprint_of if footprint_of is not None else model))
    results["memory"] = ({"peak_cuda_allocated_mb": torch.cuda.max_memory_allocated(device) / 1e6}
                         if device.type == "cuda" else
                         {"peak_process_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                          "note": "whole process since start (CPU)"})
    results["setup"] = {"device": str(device), "torch_threads": used_threads, "warmup": warmup,
                        "iterations": iterations, "max_length": max_length, "texts": len(texts),
                        "mean_tokens_per_text": float(np.mean(lengths)), "timing": "model only, tokenization excluded"}
    return results


def speedups(ours: dict, reference: dict) -> dict:
    """Reference time / our time at each batch size (> 1: we are faster)."""
    return {f"bs{b}": reference["batches"][b]["ms_mean"] / ours["batches"][b]["ms_mean"]
            for b in ours["batches"] if b in reference["batches"]}


class LatencyProfiler(pl.Callback):
    """Profiles the tested model at the end of ``test`` on the test split's texts; writes ``latency.json`` in
    the run folder and ``latency/*`` scalars to TensorBoard.

    Args:
        batch_sizes: batch sizes to time (1 gives the per-sample latency).
        warmup / iterations: untimed / timed calls per batch size.
        max_length: tokens per text (default: the data module's ``max_length``).
        reference: optional hub id or local directory of another backbone (e.g. ``bert-base-uncased``),
            timed the same way on the same texts: ``speedup`` = its latency / ours.
        num_threads: torch CPU threads while timing (default: as configured).
    """

    def __init__(self, batch_sizes: list[PositiveInt] = [1, 8, 32], warmup: NonNegativeInt = 5,
                 iterations: PositiveInt = 50, max_length: Optional[PositiveInt] = None,
                 reference: Optional[str] = None, num_threads: Optional[PositiveInt] = None,
                 filename: str = "latency.json"):
        self.batch_sizes = list(batch_sizes)
        self.warmup = warmup
        self.iterations = iterations
        self.max_length = max_length
        self.reference = reference
        self.num_threads = num_threads
        self.filename = filename
        self.results: Optional[dict] = None

    def on_test_start(self, trainer, pl_module) -> None:
        self._inputs(trainer, pl_module)  # a misconfiguration stops the run before the test loop, not after it

    def _inputs(self, trainer, pl_module) -> tuple[list[str], object]:
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            raise FinlightError(f"LatencyProfiler: {type(pl_module).__name__} has no tokenizer attribute")
        return _test_texts(trainer), tokenizer

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        texts, tokenizer = self._inputs(trainer, pl_module)
        data_hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}
        max_length = self.max_length or data_hparams.get("max_length") or 128
        inner = getattr(pl_module, "model", None)
        inner = inner if isinstance(inner, torch.nn.Module) else pl_module  # the deployable model, not the wrapper
        results = profile_model(pl_module, tokenizer, texts, self.batch_sizes, self.warmup, self.iterations, max_length,
                                num_threads=self.num_threads, footprint_of=inner)
        results["model"] = type(inner).__name__
        if self.reference:
            from finlight.core.backbone import load_pretrained

            model, ref_tokenizer = load_pretrained(self.reference, pl_module.label_names)
            model.to(pl_module.device)
            results["reference"] = profile_model(model, ref_tokenizer, texts, self.batch_sizes, self.warmup,
                                                 self.iterations, max_length, pl_module.device, self.num_threads)
            results["reference"]["model"] = self.reference
            results["speedup"] = speedups(results, results["reference"])
            del model
        self.results = results
        self._write(trainer, results)

    def _write(self, trainer, results: dict) -> None:
        folder = run_dir(trainer) or "."
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.filename)
        with open(path, "w") as handle:
            json.dump(results, handle, indent=2)
        scalars = {"latency/parameters": results["parameters"], "latency/disk_size_mb": results["disk_size_mb"]}
        for b, row in results["batches"].items():
            scalars[f"latency/ms_mean_bs{b}"] = row["ms_mean"]
            scalars[f"latency/ms_p95_bs{b}"] = row["ms_p95"]
            scalars[f"latency/samples_per_s_bs{b}"] = row["samples_per_s"]
        for b, ratio in results.get("speedup", {}).items():
            scalars[f"latency/speedup_{b}"] = ratio
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        lines = [f"bs {b}: {r['ms_mean']:.2f} ± {r['ms_std']:.2f} ms (p95 {r['ms_p95']:.2f}), "
                 f"{r['samples_per_s']:.0f} samples/s" for b, r in results["batches"].items()]
        ratio = "".join(f", speed-up vs {results['reference']['model']} at {b}: {v:.1f}×"
                        for b, v in results.get("speedup", {}).items())
        print(f"finlight: latency ({results['setup']['device']}, {results['parameters'] / 1e6:.2f} M params, "
              f"{results['disk_size_mb']:.1f} MB): " + "; ".join(lines) + ratio + f" → {path}")


def _test_texts(trainer) -> list[str]:
    datamodule = getattr(trainer, "datamodule", None)
    splits = getattr(datamodule, "splits", None) or {}
    texts = [r.text for r in splits.get("test", [])] or list(getattr(datamodule, "predict_texts", []) or [])
    if not texts:
        raise FinlightError("LatencyProfiler needs a finlight data module with a non-empty test split")
    return texts
