"""benchmarks/machine.py: the CPU line names ISA-limiting variables; the matmul probe stays short when slow; the
encoder FLOP count by hand (full, and with the first-token last layer)."""

import time

import pytest
import torch


@pytest.fixture
def machine(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    import machine

    return machine


def test_cpu_line_names_the_code_path_limits(machine, monkeypatch):
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert "limited" not in machine.cpu_line()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    line = machine.cpu_line()
    assert "code paths limited by ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2;" in line


def test_matmul_probe_shrinks_when_one_product_would_be_slow(machine, monkeypatch):
    sizes = []
    real_mm = torch.mm

    def slow_mm(a, b):  # 0.05 s for a 256² product: a 2048² one would take 25 s, a 512² one 0.4 s
        sizes.append(a.shape[0])
        if a.shape[0] == 256:
            time.sleep(0.05)
        return real_mm(a, b)

    monkeypatch.setattr(machine.torch, "mm", slow_mm)
    rate = machine.matmul_gflops(torch.float32, size=2048, seconds=0.05)
    assert rate > 0
    assert max(sizes) == 512  # 2048 → 1024 (3.2 s) → 512 (0.4 s ≤ 1 s)


def test_encoder_flops_by_hand_full_and_first_token_last_layer(machine):
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=2, intermediate_size=4, num_hidden_layers=2)
    # a layer over 3 tokens: 3 × (4·2·2 + 2·2·4) projections/FFN + 2·3·3·2 attention = 96 + 36 = 132 multiply-adds
    assert machine.encoder_forward_flops(config, [3]) == 2 * 2 * 132
    # the last layer for the first token: K/V 3 × 2·2·2 = 24, Q/O/FFN 2·2·2 + 2·2·4 = 24, attention 2·3·2 = 12
    assert machine.encoder_forward_flops(config, [3], first_token_last_layer=True) == 2 * (132 + 60)
    assert machine.encoder_forward_flops(config, [3, 3]) == 2 * machine.encoder_forward_flops(config, [3])
