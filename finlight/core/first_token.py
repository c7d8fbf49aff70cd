"""The last encoder layer computed for the first token only: the one position a BERT classifier reads.

``BertForSequenceClassification`` scores ``tanh(W · h_last[:, 0])``: of the last layer's outputs only the first
token's is used, so its query projection, attention output, feed-forward block and layer norms for every other
token are computed (forward *and* backward) and thrown away. Only that layer's keys and values need every token.
For MiniLM-L6 that waste is 10/12 of one layer's matmuls out of six layers (~14 % of the encoder's FLOPs).

:func:`first_token_only` computes the last layer for position 0 alone, with the layer's own modules (LoRA or
4-bit layers inside them keep working) and the attention function the config names (so finlight's CPU dropout
kernel still applies). Logits and every gradient are those of the full layer (tested to float rounding); only the
dropout masks of that layer are drawn for fewer elements. Neither transformers nor torch skip unused positions,
hence this module. It is used where only logits are wanted (`SequenceClassifier.forward`, the torch `Predictor`,
the ONNX export's trace) and is off whenever something else could see the last hidden states: models other than
BERT with its pooler, decoders, gradient checkpointing (the recomputation runs outside the context), chunked
feed-forward, other attention kernels.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType
from typing import Iterator, Optional

import torch
from torch import nn

from finlight.core.cpu_dropout import ATTENTION_NAME as CPU_DROPOUT_ATTENTION

# attention implementations whose mask is a [batch, 1, query, key] tensor (or None) that slices to one query
_MASK_SLICEABLE = ("eager", "sdpa", CPU_DROPOUT_ATTENTION)


def target_layer(model: nn.Module) -> Optional[nn.Module]:
    """The last ``BertLayer`` of a ``BertForSequenceClassification`` (inside peft too) whose other positions no
    output reads, or None where the shortcut does not apply."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ != "BertForSequenceClassification":
        return None
    bert = getattr(base, "bert", None)
    if bert is None or getattr(bert, "pooler", None) is None:
        return None
    config = bert.config
    if getattr(config, "_attn_implementation", None) not in _MASK_SLICEABLE or config.is_decoder:
        return None
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not layers:
        return None
    last = layers[-1]
    if (type(last).__name__ != "BertLayer" or type(last.attention.self).__name__ != "BertSelfAttention"
            or last.chunk_size_feed_forward or getattr(last, "gradient_checkpointing", False)):
        return None
    return last


def _first_token_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None,
                         encoder_hidden_states=None, encoder_attention_mask=None, cache=None, **kwargs):
    """``BertLayer.forward`` for position 0 only (keys and values from every position); returns ``[B, 1, H]``."""
    if encoder_hidden_states is not None or cache is not None:
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, cache=cache, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attention = layer.attention.self
    batch, length = hidden_states.shape[:2]
    first = hidden_states[:, :1]
    heads = (batch, -1, attention.num_attention_heads, attention.attention_head_size)
    query = attention.query(first).view(*heads).transpose(1, 2)
    key = attention.key(hidden_states).view(*heads).transpose(1, 2)
    value = attention.value(hidden_states).view(*heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == length:
        attention_mask = attention_mask[:, :, :1]
    function = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = function(attention, query, key, value, attention_mask,
                          dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling,
                          **kwargs)
    attended = layer.attention.output(context.reshape(batch, 1, -1).contiguous(), first)
    return layer.feed_forward_chunk(attended)


@contextmanager
def first_token_only(model: nn.Module) -> Iterator[bool]:
    """Within the block, ``model``'s last layer computes the first token only (yields whether it applies)."""
    layer = target_layer(model)
    if layer is None:
        yield False
        return
    layer.forward = MethodType(_first_token_forward, layer)
    try:
        yield True
    finally:
        del layer.forward
