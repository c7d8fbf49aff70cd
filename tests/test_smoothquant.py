"""SmoothQuant-style smoothing (finlight.deploy.smoothquant): the scales by hand, the smoothed encoder computes the
same function, outliers move out of the activations, and non-BERT models are refused."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from finlight.deploy.smoothquant import ScaledInput, input_maxima, smooth_encoder, smoothing_scales
from finlight.errors import FinlightError


def test_smoothing_scales_by_hand():
    s = smoothing_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([4.0, 1.0, 9.0]), alpha=0.5)
    # sqrt(16) / sqrt(4) = 2; sqrt(1) / sqrt(1) = 1; the zero activation is floored: sqrt(1e-5) / sqrt(9)
    assert torch.allclose(s, torch.tensor([2.0, 1.0, (1e-5) ** 0.5 / 3.0]))
    assert torch.allclose(smoothing_scales(torch.tensor([8.0]), torch.tensor([2.0]), alpha=1.0), torch.tensor([8.0]))
    assert torch.allclose(smoothing_scales(torch.tensor([8.0]), torch.tensor([2.0]), alpha=0.0), torch.tensor([0.5]))
    with pytest.raises(FinlightError, match="alpha 1.5"):
        smoothing_scales(torch.ones(1), torch.ones(1), alpha=1.5)


def _tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # an outlier channel in every FFN input, as trained BERTs have
        for layer in model.bert.encoder.layer:
            layer.attention.output.LayerNorm.weight[5] = 40.0
    ids = torch.randint(1, 120, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[0, 6:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


def test_smoothed_encoder_computes_the_same_logits_and_flattens_the_outlier():
    model, batch = _tiny_bert()
    before = model(**batch).logits
    maxima = input_maxima(model, [batch])
    assert set(maxima) == {f"{i}.{p}" for i in range(2)
                           for p in ("attention.output.dense", "intermediate.dense", "output.dense")}
    ffn_in = maxima["0.intermediate.dense"]
    assert ffn_in.shape == (32,) and int(ffn_in.argmax()) == 5
    summary = smooth_encoder(model, maxima, alpha=0.5)
    assert torch.allclose(model(**batch).logits, before, atol=1e-5)
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.intermediate.dense, ScaledInput) and isinstance(layer.output.dense, ScaledInput)
    assert isinstance(layer.attention.output.dense, torch.nn.Linear)  # folded into V: no extra operator
    assert summary["0.intermediate.dense"][1] > 1.0
    smoothed = ffn_in * layer.intermediate.dense.inv_scale  # the per-channel maxima the quantizer now sees
    assert smoothed.max() / smoothed.median() < 0.5 * ffn_in.max() / ffn_in.median()  # the outlier shrank


def test_non_bert_models_are_refused():
    with pytest.raises(FinlightError, match="BERT-layout encoders"):
        input_maxima(torch.nn.Linear(2, 2), [])
