"""Can another dropout kernel buy back the ~18 % of a MiniLM training step that ``aten::bernoulli_`` takes on CPU
(reports/benchmarks/step_profile_minilm.txt)? Forward + backward of dropout p = 0.1 on bf16 tensors of the shapes a
MiniLM step at batch 32 drops (attention probabilities 32 x 12 x L x L, hidden states 32 x L x 384), as ratios
against torch's own ``F.dropout`` measured in the same run:

* ``rand-compare``: the keep mask from ``torch.rand(...) >= p`` (a uniform draw instead of ``bernoulli_``);
* ``compiled``: ``torch.compile(F.dropout, dynamic=True)``: inductor's in-kernel Philox random numbers (C++ compiler
  needed; the compile time is printed, not counted);
* ``16-bit masks``: finlight's kernel (``finlight.core.cpu_dropout``, what ``fit`` uses on CPU): four 16-bit
  numbers from each 64-bit draw, a bool mask kept for the backward pass.

Every variant keeps each element with probability 1 - p and scales by 1 / (1 - p) (printed: the kept share on 1 M
elements). A variant faster here would still save at most its gain times the dropout share of a step.

    HF_HUB_OFFLINE=1 python benchmarks/dropout_kernels.py [--threads 2] [--repeats 30]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_line  # noqa: E402

P = 0.1


def native(x):
    return torch.nn.functional.dropout(x, P, True)


def rand_compare(x):
    keep = torch.rand(x.shape, dtype=torch.float32) >= P
    return x * keep * (1.0 / (1.0 - P))


def seconds(fn, shape, repeats):
    """Median seconds of forward + backward of ``fn`` on a bf16 tensor of ``shape`` (two warm-up calls)."""
    x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(shape, dtype=torch.bfloat16)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        fn(x).backward(grad)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(cpu_line())
    start = time.perf_counter()
    compiled = torch.compile(native, dynamic=True)
    for length in (40, 48):  # two lengths: the dynamic-shape graph, then no recompilation
        for shape in ((32, 12, length, length), (32, length, 384)):
            compiled(torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    print(f"compile (fwd + bwd, dynamic shapes): {time.perf_counter() - start:.1f} s, not counted below")
    from finlight.core.cpu_dropout import apply_dropout

    variants = {"F.dropout (reference)": native, "rand-compare": rand_compare, "compiled": compiled,
                "16-bit masks": lambda x: apply_dropout(x, P)}
    ones = torch.ones(1_000_000, dtype=torch.bfloat16)
    for name, fn in variants.items():
        out = fn(ones)
        print(f"{name:24s} kept {float((out != 0).float().mean()):.4f} (expected {1 - P:.4f}), "
              f"scale {float(out.max()):.4f}")
    print(f"\nms per forward + backward (median of {args.repeats}), bf16, p = {P}, {args.threads} threads")
    print(f"{'shape':22s}" + "".join(f"{name:>24s}" for name in variants))
    for shape in ((32, 12, 44, 44), (32, 44, 384), (32, 12, 64, 64), (32, 64, 384)):
        ms = {name: 1e3 * seconds(fn, shape, args.repeats) for name, fn in variants.items()}
        ref = ms["F.dropout (reference)"]
        print(f"{str(shape):22s}" + "".join(f"{v:10.2f} ms ({ref / v:5.2f}x)" for v in ms.values()))


if __name__ == "__main__":
    main()
