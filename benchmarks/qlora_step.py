"""Peak memory and step time of a QLoRA training step vs the same model unquantized, ratios printed.

    python benchmarks/qlora_step.py [--hidden 512 --layers 4 --steps 10 --batch 4 --seq 128 --device cpu|cuda]

One random-init Llama-shaped decoder, saved once; each variant runs in its own process (so one's peak memory
cannot hide in another's) and does: load → (quantize) → prepare → LoRA → ``steps`` AdamW steps on random tokens.

* reference: fp32 weights + LoRA (the same adapters QLoRA trains), and for scale fp32 full fine-tuning;
* QLoRA: NF4 4-bit (double quantisation) + LoRA, and LLM.int8 8-bit + LoRA.

Memory: weights (``get_memory_footprint``) and the peak while training, above the process's memory before
loading (CUDA: max allocated after the load, reset; CPU: RSS sampled every millisecond during the steps after
``malloc_trim``, so the fp32 read that bitsandbytes quantizes from at load time is not counted). Time: median step after a warm-up
step. On CPU the 4-bit kernels dequantize on every matmul: QLoRA buys memory, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _timing import seconds_per_call  # benchmarks/_timing.py

VARIANTS = ["fp32_lora", "fp32_full", "nf4_lora", "int8_lora"]


def build(path: str, hidden: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                         max_position_embeddings=1024, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Highest resident set size seen while running (CPU has no resettable peak counter)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss_bytes(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)


def run_variant(variant: str, path: str, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from finlight.core.adapters import (LLAMA_PROJECTIONS, LoraOptions, QuantizationOptions, apply_adapters,
                                          quantized_load_kwargs)

    import bitsandbytes  # noqa: F401  every variant imports the same code before the baseline is taken
    import peft  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    baseline = torch.cuda.memory_allocated() if cuda else rss_bytes()
    quantization = {"nf4_lora": QuantizationOptions(bits=4, quant_type="nf4", compute_dtype=args.compute_dtype),
                    "int8_lora": QuantizationOptions(bits=8)}.get(variant)
    kwargs = quantized_load_kwargs(quantization, device, ["lm_head"]) if quantization else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    if not quantization:
        model.to(device)
    lora = LoraOptions(r=16, alpha=16, dropout=0.0, target_modules=LLAMA_PROJECTIONS)
    lora = None if variant == "fp32_full" else lora
    model = apply_adapters(model, lora, quantization, False, "CAUSAL_LM").train()
    weights = model.get_memory_footprint()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 4096, (args.batch, args.seq), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:  # hand the load's freed buffers (the fp32 weights bitsandbytes quantized from) back to the OS
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    sampler = RssSampler()
    sampler.start()
    losses = []

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    times = seconds_per_call(step, args.steps, warmup=1, cuda=cuda)  # the first step pays for lazy initialisation
    sampler.running = False
    sampler.join()
    peak = (torch.cuda.max_memory_allocated() if cuda else sampler.peak) - baseline
    return {"variant": variant, "weights_mb": weights / 2**20, "peak_mb": peak / 2**20,
            "step_s": statistics.median(times), "trainable": sum(p.numel() for p in trainable),
            "loss": float(losses[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args.variant, args.model_dir, args)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as model_dir:
        build(model_dir, args.hidden, args.layers)
        results = {}
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant, "--model_dir", model_dir] + sys.argv[1:]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                print(f"{variant}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = results.get("fp32_lora")
    print(f"tiny Llama: hidden {args.hidden}, {args.layers} layers, batch {args.batch} × seq {args.seq}, "
          f"device {args.device}, {args.threads} threads, {args.steps} timed steps")
    print(f"{'variant':<10} {'trainable':>10} {'weights MB':>11} {'peak MB':>9} {'step s':>8}  "
          f"{'weights ×':>9} {'peak ×':>7} {'time ×':>7}   (× = ratio to fp32_lora, measured in this run)")
    for name, r in results.items():
        ratios = (f"{r['weights_mb'] / ref['weights_mb']:>9.2f} {r['peak_mb'] / ref['peak_mb']:>7.2f} "
                  f"{r['step_s'] / ref['step_s']:>7.2f}") if ref else ""
        print(f"{name:<10} {r['trainable']:>10,} {r['weights_mb']:>11.1f} {r['peak_mb']:>9.1f} {r['step_s']:>8.3f}  "
              f"{ratios}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
