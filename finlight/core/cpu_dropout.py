"""Dropout at a fifth of its CPU cost: 16 random bits per element instead of a ``bernoulli_`` draw each.

On CPU, torch's dropout draws one Mersenne-Twister sample per element (``aten::bernoulli_``): 18 % of a MiniLM
training step in bf16 (reports/benchmarks/step_profile_minilm.txt), as much as every ``mm`` of the forward and
backward together. One 64-bit draw gives four 16-bit numbers; comparing them with ``round(p * 65536)`` keeps an
element with probability ``q = 1 - round(p * 65536) / 65536`` (0.1 → 0.100006) and the kept ones are scaled by
``1 / q``, so the output's expectation is the input, as with ``F.dropout``. The masks come from torch's default
generator, so ``seed_everything`` makes them reproducible. Neither torch nor transformers offer a cheaper CPU
dropout (``torch.compile``'s in-kernel Philox was slower still: reports/benchmarks/dropout_kernels.txt), hence
this module.

Hugging Face attention hands the dropout *probability* to ``F.scaled_dot_product_attention``, whose CPU math path
then calls ``bernoulli_`` on the attention weights; :func:`attention_forward` (registered with transformers'
``AttentionInterface``) computes the same softmax attention and drops with :func:`dropout_mask` instead. Without
dropout (eval, ``p = 0``) or off the CPU it is transformers' own SDPA function.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

ATTENTION_NAME = "finlight_cpu_dropout"
_LEVELS = 1 << 16


def keep_probability(p: float) -> float:
    """The exact keep probability of :func:`dropout_mask` for dropout ``p`` (``p`` rounded to 1/65536)."""
    return 1.0 - round(p * _LEVELS) / _LEVELS


def dropout_mask(shape, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A bool keep-mask of ``shape``: each element True with probability ``keep_probability(p)``."""
    numel = 1
    for size in shape:
        numel *= int(size)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform (the default range leaves the sign)
    threshold = -(1 << 15) + round(p * _LEVELS)
    return (words.view(torch.int16)[:numel] >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` that keeps only the 1-byte mask for the backward pass."""

    @staticmethod
    def forward(ctx, x, mask, scale: float):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None, None


def apply_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with :func:`dropout_mask` on CPU tensors; torch's own everywhere else."""
    if not training or p == 0.0 or x.device.type != "cpu" or not 0.0 < p < 1.0:
        return nn.functional.dropout(x, p, training)
    return _MaskedScale.apply(x, dropout_mask(x.shape, p), 1.0 / keep_probability(p))


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` drawing its CPU masks with :func:`dropout_mask` (same ``p``, no state, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return apply_dropout(x, self.p, self.training)


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      **kwargs):
    """transformers' attention-function signature; softmax attention with :func:`dropout_mask` when training on
    CPU with dropout, transformers' SDPA function otherwise (eval, ``dropout = 0``, GPUs, grouped KV heads).
    Computed in fp32 and returned in the input's dtype, as torch's CPU math SDPA does (bf16 scores cost the
    quickstart up to 8 pt; reports/benchmarks/README.md)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if (dropout == 0.0 or query.device.type != "cpu" or grouped or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    with torch.autocast("cpu", enabled=False):  # fp32 like torch's CPU math SDPA: bf16 scores lose half the digits
        output = _softmax_attention(query.float(), key.float(), value.float(), attention_mask, dropout, scaling,
                                    module, kwargs.get("is_causal"))
    return output.to(query.dtype).transpose(1, 2).contiguous(), None


def _softmax_attention(query, key, value, attention_mask, dropout: float, scaling: float, module, causal):
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    causal = getattr(module, "is_causal", False) if causal is None else causal
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask.float()
    elif causal and query.shape[2] > 1:
        future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool).triu(1 + key.shape[2] - query.shape[2])
        weights = weights.masked_fill(future, torch.finfo(weights.dtype).min)
    weights = apply_dropout(nn.functional.softmax(weights, dim=-1), dropout, True)
    return torch.matmul(weights, value)


def register_attention() -> None:
    """Make :data:`ATTENTION_NAME` a transformers attention implementation (idempotent), with SDPA's masks:
    without a mask function of its own, transformers builds *no* padding mask for a custom name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def attention_dropout(config) -> float:
    """The attention-probability dropout a Hugging Face config asks for (BERT, Llama and GPT-2 spell it apart)."""
    for key in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def enable(model: nn.Module) -> dict:
    """Swap every ``nn.Dropout`` in ``model`` for :class:`CpuDropout` and point the Hugging Face models inside it
    whose attention runs SDPA with dropout at :func:`attention_forward`; returns what changed (for :func:`disable`)."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                replacement = CpuDropout(child.p)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped.append((parent, name, child))
    attention = []
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if (getattr(config, "_attn_implementation", None) == "sdpa" and attention_dropout(config) > 0
                and hasattr(sub, "set_attn_implementation")):
            if not attention:
                register_attention()
            sub.set_attn_implementation(ATTENTION_NAME)
            attention.append(sub)
    return {"dropout": swapped, "attention": attention}


def disable(changes: dict) -> None:
    """Undo :func:`enable` (the original modules back, SDPA attention back)."""
    for parent, name, original in changes.get("dropout", []):
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)
    for sub in changes.get("attention", []):
        sub.set_attn_implementation("sdpa")
