"""The CPU dropout kernel: the mask's keep rate (per 16-bit lane), the forward/backward scaling against
hand-computed values, reproducibility under a seed, the attention function against transformers' SDPA, the
swap on the real MiniLM (eval logits unchanged) and the CLI fit that turns it on and undoes it."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from finlight.core import cpu_dropout
from finlight.core.cpu_dropout import (ATTENTION_NAME, CpuDropout, apply_dropout, attention_forward, dropout_mask,
                                       keep_probability)

from conftest import scratch_fit_config


def test_keep_probability_is_p_rounded_to_a_65536th():
    assert keep_probability(0.1) == 1 - 6554 / 65536
    assert keep_probability(0.5) == 0.5
    assert keep_probability(1e-6) == 1.0


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_the_stated_share_in_every_lane(p):
    torch.manual_seed(0)
    mask = dropout_mask((1 << 22,), p)
    q = keep_probability(p)
    sigma = (q * (1 - q) / mask.numel() * 4) ** 0.5  # per lane: a quarter of the elements
    assert mask.dtype == torch.bool and mask.shape == (1 << 22,)
    for lane in range(4):  # one 64-bit word gives 4 numbers: a lane with a biased bit shows here
        assert abs(float(mask.view(-1, 4)[:, lane].float().mean()) - q) < 5 * sigma


def test_mask_shape_and_odd_sizes():
    assert dropout_mask((3, 5, 7), 0.2).shape == (3, 5, 7)
    assert dropout_mask((1,), 0.2).shape == (1,)


def test_forward_and_backward_scale_the_kept_elements():
    torch.manual_seed(3)
    x = torch.arange(1.0, 1001.0, requires_grad=True)
    out = apply_dropout(x, 0.25)
    q = keep_probability(0.25)
    kept = out != 0
    assert 0 < int(kept.sum()) < 1000
    assert torch.allclose(out[kept], x.detach()[kept] / q)
    out.backward(torch.full((1000,), 2.0))
    assert torch.allclose(x.grad, kept.float() * 2.0 / q)  # d out / d x = mask / q


def test_bf16_keeps_its_dtype():
    out = apply_dropout(torch.ones(64, 32, dtype=torch.bfloat16), 0.1)
    assert out.dtype == torch.bfloat16
    assert set(out.float().unique().tolist()) <= {0.0, float(torch.tensor(1 / keep_probability(0.1)).bfloat16())}


def test_same_seed_same_mask_other_seed_other_mask():
    x = torch.ones(4096)
    torch.manual_seed(11)
    first = apply_dropout(x, 0.1)
    torch.manual_seed(11)
    assert torch.equal(first, apply_dropout(x, 0.1))
    torch.manual_seed(12)
    assert not torch.equal(first, apply_dropout(x, 0.1))


def test_eval_and_zero_p_are_the_identity():
    x = torch.randn(100)
    assert torch.equal(apply_dropout(x, 0.3, training=False), x)
    assert torch.equal(apply_dropout(x, 0.0), x)
    module = CpuDropout(0.3).eval()
    assert torch.equal(module(x), x)
    assert module.state_dict() == {} and module.p == 0.3


def _qkv(batch=2, heads=3, length=5, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_attention_matches_sdpa_when_nothing_is_dropped(mask_kind):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv()
    module = nn.Module()
    module.is_causal = mask_kind == "causal"
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        mask[0, :, :, 3:] = False  # padding in the first sequence
    elif mask_kind == "float":
        mask = torch.zeros(2, 1, 5, 5)
        mask[1, :, :, 4:] = torch.finfo(torch.float32).min
    ours, _ = attention_forward(module, q, k, v, mask, dropout=1e-6)  # rounds to keep-all: our math path
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    assert ours.shape == reference.shape == (2, 5, 3, 4)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_bf16_attention_is_computed_in_fp32_and_returned_in_bf16():
    """Under bf16 autocast the scores, softmax and weighted sum run in fp32 (as torch's CPU math SDPA does, which
    is what HF trains with when dropout > 0): bf16 scores lost accuracy on the quickstart (0.75 vs 0.83)."""
    q, k, v = (t * 4 for t in _qkv(length=16, dim=8))
    module = nn.Module()
    module.is_causal = False
    exact, _ = attention_forward(module, q, k, v, None, dropout=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention_forward(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, dropout=1e-6)
    inputs_rounded, _ = attention_forward(module, q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                          None, dropout=1e-6)
    assert ours.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), inputs_rounded.bfloat16().float(), atol=0, rtol=0)  # only the output rounded
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()  # what scoring in bf16 would give: several times worse
    in_bf16 = (torch.softmax(qb @ kb.transpose(2, 3) * 8 ** -0.5, dim=-1).to(torch.bfloat16) @ vb).transpose(1, 2)
    assert (in_bf16.float() - inputs_rounded).abs().mean() > 2 * (ours.float() - inputs_rounded).abs().mean()


def test_attention_dropout_is_unbiased():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(batch=1, heads=1, length=4, dim=2)
    module = nn.Module()
    module.is_causal = False
    torch.manual_seed(0)
    draws = torch.stack([attention_forward(module, q, k, v, None, dropout=0.5)[0] for _ in range(4000)])
    reference, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0)
    assert not torch.allclose(draws[0], reference, atol=1e-3)  # one draw drops
    assert torch.allclose(draws.mean(0), reference, atol=0.06)  # their mean is the attention


def test_enable_on_minilm_keeps_eval_logits_and_disable_restores(prepared_encoders):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = prepared_encoders / "minilm-l6"
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    batch = tokenizer(["Operating profit rose to EUR 13.1 mn .", "Sales fell ."], padding=True, return_tensors="pt")
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # a padded batch
    with torch.no_grad():
        before = model(**batch).logits
    changes = cpu_dropout.enable(model)
    assert len(changes["dropout"]) == 20 and len(changes["attention"]) == 1  # 6 layers x 3 + embeddings + head
    assert model.config._attn_implementation == ATTENTION_NAME
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # padding masked as before, nothing dropped in eval
    model.train()
    torch.manual_seed(1)
    first = model(**batch).logits
    torch.manual_seed(1)
    assert torch.equal(model(**batch).logits, first) and not torch.allclose(first, before)
    cpu_dropout.disable(changes)
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, CpuDropout) for m in model.modules())
    assert all(m.training for m in model.modules())  # the originals came back in train mode too


def test_a_model_without_attention_dropout_keeps_its_attention():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.0))
    changes = cpu_dropout.enable(model)
    assert changes["attention"] == [] and model.config._attn_implementation == "sdpa"


class DropoutProbe(pl.Callback):
    """Records which dropout classes the model trains with."""

    seen: set = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        DropoutProbe.seen |= {type(m).__name__ for m in pl_module.modules() if isinstance(m, nn.Dropout)}


def test_cli_fit_trains_with_the_kernel_and_undoes_it(in_tmp, caplog):
    from finlight.cli import run_cli

    DropoutProbe.seen = set()
    config = scratch_fit_config(in_tmp, "dropout_on", 1, [{"class_path": "test_cpu_dropout.DropoutProbe"}])
    cli = run_cli(["fit", "--config", config])
    assert DropoutProbe.seen == {"CpuDropout"}
    assert "CPU dropout kernel on 8 dropout module(s) and the attention of 1 model(s)" in caplog.text
    assert not any(isinstance(m, CpuDropout) for m in cli.model.modules())  # teardown restored nn.Dropout


def test_cli_config_can_turn_it_off(in_tmp):
    from finlight.cli import run_cli

    DropoutProbe.seen = set()
    config = scratch_fit_config(in_tmp, "dropout_off", 1, [
        {"class_path": "test_cpu_dropout.DropoutProbe"},
        {"class_path": "finlight.core.callbacks.CpuDropoutKernel", "init_args": {"enabled": False}}])
    run_cli(["fit", "--config", config])
    assert DropoutProbe.seen == {"Dropout"}
