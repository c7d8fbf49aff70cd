"""SmoothQuant-style activation smoothing of a BERT-family encoder before INT8 (Xiao et al., 2023).

onnxruntime's dynamic INT8 quantizes each MatMul input with one scale per tensor, so a few hidden channels with
large activations set the step for all the others. Smoothing divides input channel j of a linear layer by
``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)`` (activation maxima from calibration texts) and multiplies the
weight's column j by ``s_j``: the layer computes the same function, but the activation outliers have moved into
the (per-channel quantized) weights. SmoothQuant folds ``1/s`` into the preceding LayerNorm; in a post-LN BERT
that LayerNorm's output is also the residual, so here

* the FFN input (the attention block's LayerNorm output, also its residual) and the FFN output projection
  (GELU output) get an explicit ``x * (1/s)`` in front of the matmul: one cheap elementwise product each,
  outside onnxruntime's fused Attention / SkipLayerNormalization / BiasGelu patterns;
* the attention output projection's input is softmax-weighted V, so ``1/s`` folds exactly into V's output
  channels (weights and bias): no extra operator, the fused Attention kernel is unchanged.

Q/K/V inputs are left alone (their ``1/s`` would have to sit between the LayerNorm and the fused Attention).
Written here because no installed library does it for onnxruntime graphs: neural-compressor (which onnxruntime's
``SmoothQuant`` option calls) is not a dependency, and its pass folds into LayerNorms, wrong for post-LN residuals.
"""

from __future__ import annotations

from typing import Iterable

import torch

from finlight.errors import FinlightError


def smoothing_scales(activation_max: torch.Tensor, weight_max: torch.Tensor, alpha: float = 0.5,
                     floor: float = 1e-5) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_:j|^(1-alpha)`` per input channel (both maxima clamped at ``floor``)."""
    if not 0.0 <= alpha <= 1.0:
        raise FinlightError(f"smoothing alpha {alpha}: must be in [0, 1]")
    a, w = activation_max.clamp(min=floor), weight_max.clamp(min=floor)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=floor)


class ScaledInput(torch.nn.Module):
    """``linear(x * inv_scale)`` with ``linear``'s weight columns already multiplied by ``1 / inv_scale``."""

    def __init__(self, linear: torch.nn.Linear, scale: torch.Tensor):
        super().__init__()
        with torch.no_grad():
            linear.weight.mul_(scale.to(linear.weight.dtype))
        self.linear = linear
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def _layers(model: torch.nn.Module) -> list:
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = list(getattr(encoder, "layer", None) or [])
    parts = ("attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense")
    if not layers or not all(_get(layers[0], p) is not None for p in parts):
        raise FinlightError(f"smoothing supports BERT-layout encoders (encoder.layer[i].{', '.join(parts)}), "
                            f"not {type(model).__name__}")
    return layers


def _get(module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


@torch.no_grad()
def input_maxima(model: torch.nn.Module, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of every layer's attention output, FFN input and FFN output projections over
    the calibration ``batches`` (``input_ids`` / ``attention_mask`` tensors; padded positions count: the dynamic
    quantizer sees them too)."""
    maxima: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(_layers(model)):
        for part in ("attention.output.dense", "intermediate.dense", "output.dense"):
            key = f"{i}.{part}"

            def hook(_module, inputs, key=key):
                value = inputs[0].detach().abs().flatten(0, -2).amax(0).float()
                maxima[key] = torch.maximum(maxima[key], value) if key in maxima else value

            hooks.append(_get(layer, part).register_forward_pre_hook(hook))
    try:
        model.eval()
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    if not maxima:
        raise FinlightError("smoothing: no calibration batch reached the encoder")
    return maxima


@torch.no_grad()
def smooth_encoder(model: torch.nn.Module, maxima: dict[str, torch.Tensor], alpha: float = 0.5) -> dict:
    """Smooth ``model`` in place (see the module docstring); the function it computes is unchanged up to float
    rounding. Returns per-part summaries of the scales (min / max of ``s``)."""
    summary = {}
    for i, layer in enumerate(_layers(model)):
        value, attn_out = layer.attention.self.value, layer.attention.output.dense
        s = smoothing_scales(maxima[f"{i}.attention.output.dense"], attn_out.weight.abs().amax(0), alpha)
        value.weight.div_(s[:, None])  # V's output channel j feeds context channel j = attention output input j
        value.bias.div_(s)
        attn_out.weight.mul_(s)
        summary[f"{i}.attention.output.dense"] = (float(s.min()), float(s.max()))
        for holder, name in ((layer.intermediate, "dense"), (layer.output, "dense")):
            linear = getattr(holder, name)
            key = f"{i}.{'intermediate' if holder is layer.intermediate else 'output'}.dense"
            s = smoothing_scales(maxima[key], linear.weight.abs().amax(0), alpha)
            setattr(holder, name, ScaledInput(linear, s))
            summary[key] = (float(s.min()), float(s.max()))
    return summary
