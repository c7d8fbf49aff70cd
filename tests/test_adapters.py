"""Backbone options (LoRA, 4/8-bit, gradient checkpointing) and adapter-only checkpoints of SequenceClassifier."""

from pathlib import Path

import pytest
import torch
from torch import nn

from finlight.errors import FinlightError
from finlight.core import SequenceClassifier
from finlight.core.adapters import (LoraOptions, QuantizationOptions, apply_adapters, as_options,
                                      check_adapter_state, is_checkpointing, keep_in_place, quantized_load_kwargs,
                                      trainable_state_dict, validate_options)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(num_labels: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=num_labels or 2)
    return LlamaForSequenceClassification(config) if num_labels else LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(path)
    return path


def test_options_come_from_dicts_and_bad_values_are_reported_together():
    lora = as_options({"r": 4, "target_modules": ["q_proj"]}, LoraOptions)
    assert lora == LoraOptions(r=4, target_modules=["q_proj"])
    with pytest.raises(FinlightError, match=r"unknown option\(s\) \['rank'\]"):
        as_options({"rank": 4}, LoraOptions)
    with pytest.raises(FinlightError) as err:
        validate_options(LoraOptions(r=0, dropout=1.5, target_modules="q_proj"), QuantizationOptions(bits=3))
    message = str(err.value)
    assert all(s in message for s in ("lora.r=0", "lora.dropout=1.5", "'q_proj'", "bits=3"))


def test_bitsandbytes_config_keeps_heads_in_full_precision():
    q = QuantizationOptions(bits=4, quant_type="fp4", double_quant=False, compute_dtype="float32",
                            skip_modules=["embed_tokens"])
    kwargs = quantized_load_kwargs(q, torch.device("cpu"), ["score", "classifier"])
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert config.llm_int8_skip_modules == ["score", "classifier", "embed_tokens"]
    assert kwargs["device_map"] == {"": "cpu"}
    eight = quantized_load_kwargs(QuantizationOptions(bits=8), torch.device("cpu"), [])["quantization_config"]
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_lora_state_dict_holds_only_adapters_and_checks_fit():
    model = apply_adapters(tiny_llama(), LoraOptions(r=2, target_modules=["q_proj", "v_proj"]), None, False,
                           "CAUSAL_LM")
    state = trainable_state_dict(model)
    assert sorted(state) == sorted(f"base_model.model.model.layers.0.self_attn.{p}_proj.lora_{m}.default.weight"
                                   for p in "qv" for m in "AB")
    check_adapter_state(model, state)  # fits exactly
    with pytest.raises(FinlightError, match="1 missing"):
        check_adapter_state(model, dict(list(state.items())[1:]))
    with pytest.raises(FinlightError, match="another shape"):
        check_adapter_state(model, {k: torch.zeros(3, 3) for k in state})
    other = apply_adapters(tiny_llama(), LoraOptions(r=2, target_modules=["k_proj"]), None, False, "CAUSAL_LM")
    with pytest.raises(FinlightError, match="unexpected"):
        check_adapter_state(model, trainable_state_dict(other))


def test_unknown_lora_targets_are_a_finlight_error():
    with pytest.raises(FinlightError, match="model.lora"):
        apply_adapters(tiny_llama(), LoraOptions(target_modules=["query_key_value"]), None, False, "CAUSAL_LM")


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    plain, checkpointed = tiny_llama(), tiny_llama()
    checkpointed = apply_adapters(checkpointed, None, None, True, "CAUSAL_LM")
    assert is_checkpointing(checkpointed) and checkpointed.config.use_cache is False
    ids = torch.randint(1, 96, (2, 12))
    for model in (plain.train(), checkpointed.train()):
        model(input_ids=ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_keep_in_place_ignores_moves_and_casts_from_the_parent():
    parent = nn.Module()
    parent.pinned = keep_in_place(nn.Linear(2, 2))
    parent.free = nn.Linear(2, 2)
    parent.to(torch.float64)
    assert parent.pinned.weight.dtype == torch.float32 and parent.free.weight.dtype == torch.float64


def test_fp4_loading_quantizes_every_projection(llama_dir):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    q = QuantizationOptions(bits=4, quant_type="fp4", compute_dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32,
                                                 **quantized_load_kwargs(q, torch.device("cpu"), ["lm_head"]))
    layer = model.model.layers[0]
    assert isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)
    assert layer.mlp.down_proj.weight.quant_state.quant_type == "fp4"
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    full = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    ids = torch.randint(1, 96, (1, 8))
    with torch.no_grad():  # 4-bit weights are an approximation of the originals, not noise
        a, b = model(input_ids=ids).logits, full(input_ids=ids).logits
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9


# ---------------------------------------------------------------------------------------------- SequenceClassifier
def test_sequence_classifier_lora_checkpoint_is_adapter_only_and_reloads_exactly(tiny_hf_dir):
    names = ["negative", "neutral", "positive"]
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["query", "value"]}
    module = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=names, lora=lora)
    module.setup("fit")
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: every trainable weight moves away from its init
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert any(".lora_A." in k for k in keys) and any("classifier.modules_to_save" in k for k in keys)
    assert all(".lora_" in k or "modules_to_save" in k for k in keys)
    assert checkpoint["finlight"]["adapter_only"] and checkpoint["finlight"]["base"] == str(tiny_hf_dir)

    fresh = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=names, lora=lora)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=fresh.strict_loading)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    module.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(module(ids, mask), fresh(ids, mask))
        base = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=names)
        base.setup("fit")
        assert not torch.allclose(base.eval()(ids, mask), fresh(ids, mask))

    other = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=names, lora={**lora, "r": 4})
    with pytest.raises(FinlightError, match="adapter checkpoint does not fit"):
        other.on_load_checkpoint(checkpoint)


def test_sequence_classifier_option_mistakes_are_finlight_errors(tiny_hf_dir):
    with pytest.raises(FinlightError, match="need pretrained weights"):
        SequenceClassifier(scratch={"hidden_size": 32}, lora={"r": 2})
    module = SequenceClassifier(backbone=str(tiny_hf_dir), label_names=["negative", "neutral", "positive"],
                                quantization={"bits": 8})
    module.setup("fit")
    with pytest.raises(FinlightError, match="nothing to train"):
        module.configure_optimizers()
