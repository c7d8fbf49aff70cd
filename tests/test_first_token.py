"""The first-token last layer (`finlight.core.first_token`): the same logits and gradients as the full layer
(padded batches, eager / SDPA / finlight's CPU-dropout attention, LoRA, the real MiniLM), the layer really runs on
one position, the models and settings where it must stay off, and `SequenceClassifier.forward` and the torch
`Predictor` using it (and not with ``first_token_last_layer`` false)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finlight.core import cpu_dropout
from finlight.core.first_token import first_token_only, target_layer


def tiny_bert(attention: str = "sdpa", dropout: float = 0.0, layers: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, attn_implementation=attention)
    return BertForSequenceClassification(config).train()


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    return ids, mask


def logits_and_grads(model, ids, mask, shortcut: bool):
    model.zero_grad()
    with first_token_only(model) as applied:
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert applied is shortcut
    (logits * torch.arange(1.0, 4.0)).sum().backward()  # unequal weights: every logit's gradient counts
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_same(model, ids, mask, atol=1e-5):
    full_logits, full_grads = _full(model, ids, mask)
    short_logits, short_grads = logits_and_grads(model, ids, mask, shortcut=True)
    torch.testing.assert_close(short_logits, full_logits, atol=atol, rtol=1e-5)
    assert set(short_grads) == set(full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(short_grads[name], grad, atol=atol, rtol=1e-4, msg=name)


def _full(model, ids, mask):
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    (logits * torch.arange(1.0, 4.0)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_logits_and_every_gradient_match_the_full_layer(attention):
    model = tiny_bert(attention)
    assert_same(model, *padded_batch())
    assert "forward" not in vars(model.bert.encoder.layer[-1])  # the layer's own forward is back


def test_the_last_layer_runs_on_one_position_and_keys_see_every_token():
    model = tiny_bert()
    ids, mask = padded_batch()
    layer = model.bert.encoder.layer[-1]
    shapes = {}
    hooks = [layer.attention.self.query.register_forward_hook(lambda m, i, o: shapes.__setitem__("query", o.shape)),
             layer.attention.self.key.register_forward_hook(lambda m, i, o: shapes.__setitem__("key", o.shape)),
             layer.output.dense.register_forward_hook(lambda m, i, o: shapes.__setitem__("ffn", o.shape))]
    with first_token_only(model):
        model(input_ids=ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    assert shapes == {"query": (4, 1, 32), "key": (4, 9, 32), "ffn": (4, 1, 32)}


def test_padding_is_still_masked_for_the_first_token():
    """Changing a padded position's token must not move that text's logits (the sliced mask still applies)."""
    model = tiny_bert().eval()
    ids, mask = padded_batch()
    changed = ids.clone()
    changed[3, 5:] = 7
    with torch.no_grad(), first_token_only(model):
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=changed, attention_mask=mask).logits
    torch.testing.assert_close(a, b)


def test_finlight_cpu_dropout_attention_is_kept():
    """With finlight's attention function (dropout 0 in eval: its SDPA branch) the results match, and in training
    with dropout the shortcut runs through it (masks drawn for [B, heads, 1, T] weights there)."""
    model = tiny_bert(dropout=0.1)
    changes = cpu_dropout.enable(model)
    assert model.config._attn_implementation == cpu_dropout.ATTENTION_NAME
    ids, mask = padded_batch()
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        with first_token_only(model) as applied:
            short = model(input_ids=ids, attention_mask=mask).logits
    assert applied
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    model.train()
    torch.manual_seed(3)
    with first_token_only(model):
        first = model(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(3)
    with first_token_only(model):
        again = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(first, again) and not torch.allclose(first, full)  # seeded, and dropout did act
    first.sum().backward()
    assert model.bert.encoder.layer[-1].attention.self.key.weight.grad.abs().sum() > 0
    cpu_dropout.disable(changes)


def test_lora_wrapped_bert_matches():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value",
                                                                                        "dense"]))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it values so its gradients differ
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    assert target_layer(model) is not None
    assert_same(model, *padded_batch())


def test_off_where_other_positions_or_the_layer_could_be_read():
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertForSequenceClassification

    checkpointed = tiny_bert()
    checkpointed.gradient_checkpointing_enable()
    assert target_layer(checkpointed) is None  # the backward recomputation runs outside the context
    assert target_layer(BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))) is None  # no head
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                  hidden_dim=32))
    assert target_layer(distil) is None
    chunked = tiny_bert()
    chunked.bert.encoder.layer[-1].chunk_size_feed_forward = 2
    assert target_layer(chunked) is None
    no_pooler = tiny_bert()
    no_pooler.bert.pooler = None
    assert target_layer(no_pooler) is None
    ids, mask = padded_batch()
    with first_token_only(checkpointed) as applied:
        checkpointed(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert not applied


def test_real_minilm_logits_and_gradients_match(prepared_encoders):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = prepared_encoders / "minilm-l6"
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0).train()
    batch = tokenizer(["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.",
                       "The company expects net sales to decrease.", "Shares were flat."],
                      padding=True, return_tensors="pt")
    assert_same(model, batch["input_ids"], batch["attention_mask"], atol=1e-4)


@pytest.mark.parametrize("enabled", [True, False])
def test_sequence_classifier_forward_uses_it_unless_turned_off(tiny_hf_dir, enabled):
    from finlight.core.classifier import SequenceClassifier

    module = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=["positive", "negative", "neutral"],
                                first_token_last_layer=enabled)
    module.setup("fit")
    layer = module.model.bert.encoder.layer[-1]
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    ids, mask = padded_batch()
    ids = ids.clamp(max=module.model.config.vocab_size - 1)
    logits = module(ids, mask)
    handle.remove()
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    assert seen == [(4, 1 if enabled else 9, 32)]


def test_torch_predictor_uses_it_unless_turned_off_with_the_same_probabilities(tiny_hf_dir, monkeypatch):
    from finlight.core import first_token
    from finlight.deploy.predictor import Predictor

    calls = []
    original = first_token._first_token_forward
    monkeypatch.setattr(first_token, "_first_token_forward",
                        lambda layer, hidden, *args, **kwargs: calls.append(hidden.shape[1]) or original(
                            layer, hidden, *args, **kwargs))
    texts = ["Operating profit rose to EUR 12 million.", "Shares were flat.", "Net sales fell sharply this year."]
    short = Predictor.load(str(tiny_hf_dir), backend="torch", batch_size=2).predict_proba(texts)
    assert len(calls) == 2 and min(calls) > 1  # one call a batch, on the full sequences' hidden states
    full = Predictor.load(str(tiny_hf_dir), backend="torch", batch_size=2,
                          first_token_last_layer=False).predict_proba(texts)
    assert len(calls) == 2  # not called again
    assert short.shape == (3, 3)
    np.testing.assert_allclose(short, full, atol=1e-6)
