"""Would fusing MiniLM's Q, K and V projections into one matmul speed up an fp32 training step on CPU?

    HF_HUB_OFFLINE=1 python benchmarks/fused_qkv.py [--rounds 30]     # ~20 s

On a CPU without bf16 instructions (an AVX2-only machine, or ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 on an AVX-512 one) finlight trains in fp32 and its step is matmul-bound, so a larger
matmul is the remaining lever. This times the forward and backward of three [T, 384] × [384, 384] projections
against one [T, 384] × [384, 1152] projection split in three (T = 1,568 tokens: batch 32 × 49, a typical padded
PhraseBank batch), interleaved, and prints the medians. Measured 2026-12-03 on an AMD EPYC: no gain (see
reports/benchmarks/fused_qkv.txt), so finlight keeps the three projections of the pretrained checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=1568)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    t, h = args.tokens, args.hidden
    x = torch.randn(t, h, requires_grad=True)
    weights = [torch.randn(h, h, requires_grad=True) for _ in range(3)]
    biases = [torch.zeros(h, requires_grad=True) for _ in range(3)]
    fused_weight, fused_bias = torch.randn(3 * h, h, requires_grad=True), torch.zeros(3 * h, requires_grad=True)
    upstream = torch.randn(t, h)

    def separate():
        outputs = [torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases)]
        torch.autograd.backward(outputs, [upstream] * 3)

    def fused():
        outputs = torch.nn.functional.linear(x, fused_weight, fused_bias).split(h, -1)
        torch.autograd.backward(list(outputs), [upstream] * 3)

    variants = {"three projections": separate, "one fused projection": fused}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        run(), run()
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["three projections"])
    print(f"forward + backward of the Q/K/V projections, {t} tokens × {h}, "
          f"median of {args.rounds} interleaved rounds:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:22s} {1e3 * median:7.2f} ms   ({base / median:.3f}× the three projections)")


if __name__ == "__main__":
    main()
