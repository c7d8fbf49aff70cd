"""What every benchmark prints first: the CPU's relevant flags, and the matmul peak measured now, in this process
(so achieved GFLOP/s can be read as a share of what this machine delivers today, load from other processes
included); plus FLOP counts of BERT-shaped encoders for the achieved rates."""

from __future__ import annotations

import os
import time

import torch

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Variables that make the libraries take a narrower code path than the CPU has (e.g. an AVX2-only machine's, on
# an AVX-512 one): torch's own kernels, oneDNN (bf16 / int8 matmuls), MKL (fp32 BLAS).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_line() -> str:
    from finlight.core.precision import cpu_capability, cpu_flags

    flags = cpu_flags()
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    limits = [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    limited = f"; code paths limited by {' '.join(limits)}" if limits else ""
    return (f"CPU: {model or 'unknown'}; flags {' '.join(have) or 'none of ' + ' '.join(FLAGS)}; torch kernels "
            f"{cpu_capability()}{limited}; {torch.get_num_threads()} torch threads")


def matmul_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Sustained ``size``² × ``size``² matmul rate in GFLOP/s (best of repeated timed rounds).

    The size is halved while one product would take over a second (bf16 without bf16 instructions runs at
    < 1 GFLOP/s: a 2048² product would take a minute), so the probe stays within a few seconds everywhere."""
    while size > 256:
        probe = torch.randn(256, 256, dtype=dtype)
        torch.mm(probe, probe)
        start = time.perf_counter()
        torch.mm(probe, probe)
        if (time.perf_counter() - start) * (size / 256) ** 3 <= 1.0:
            break
        size //= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up (oneDNN / MKL kernel selection)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def peaks(quick: bool = False) -> dict[str, float]:
    size, seconds = (1024, 0.5) if quick else (2048, 2.0)
    return {"fp32": matmul_gflops(torch.float32, size, seconds), "bf16": matmul_gflops(torch.bfloat16, size, seconds)}


def print_header(quick: bool = False) -> dict[str, float]:
    print(cpu_line())
    peak = peaks(quick)
    print(f"matmul peak measured now ({torch.get_num_threads()} threads, best round): fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")
    return peak


def encoder_forward_flops(config, padded_lengths, first_token_last_layer: bool = False) -> float:
    """Multiply-add FLOPs (×2) of a BERT-shaped encoder's forward over sequences of the given (padded) lengths:
    the Q/K/V/O projections and the FFN per token, QKᵀ and attention × V per token pair; embeddings, norms and
    the classification head are left out (well under 1 % here). ``first_token_last_layer``: the last layer as
    finlight's classifier computes it (`finlight.core.first_token`): keys and values for every token, the rest
    for the first one only."""
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for length in padded_lengths:
        per_layer = length * (4 * h * h + 2 * h * ffn) + 2 * length * length * h
        if first_token_last_layer and layers > 0:
            last = length * 2 * h * h + (2 * h * h + 2 * h * ffn) + 2 * length * h
            total += 2 * ((layers - 1) * per_layer + last)
        else:
            total += 2 * layers * per_layer
    return total


def rate_line(name: str, flops: float, seconds: float, peak: float) -> str:
    gflops = flops / seconds / 1e9
    return f"{name}: {gflops:.1f} GFLOP/s achieved = {100 * gflops / peak:.0f} % of the measured matmul peak"
