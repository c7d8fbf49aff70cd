"""Post-training dynamic INT8 for CPU inference, and the size of a model's weights on disk.

`dynamic_int8` swaps every ``nn.Linear`` for PyTorch's dynamically quantized one (INT8 weights, activations
quantized on the fly per batch; no calibration data). ``torch.ao.quantization`` is deprecated in favour of
torchao but still ships and runs in torch 2.13; for deployment without torch, ``python -m finlight
export-onnx --int8`` does the same with onnxruntime. Embeddings and LayerNorms stay in float32.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import torch
from torch import nn


def dynamic_int8(model: nn.Module) -> nn.Module:
    """An INT8 copy of ``model`` (eval mode, CPU) with dynamically quantized Linear layers; ``model`` is kept."""
    from torch.ao.quantization import quantize_dynamic

    source = copy.deepcopy(model).to("cpu").float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(source, {nn.Linear}, dtype=torch.qint8)


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` — one measure for float and quantized models alike
    (a quantized model cannot ``save_pretrained``). Tied weights are stored once."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def count_linear(model: nn.Module, quantized: bool) -> int:
    """How many Linear layers are (``quantized=True``) or are not dynamically quantized."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    kind = DynamicLinear if quantized else nn.Linear
    return sum(isinstance(m, kind) for m in model.modules())
