"""Real layer removal on tiny random-init BERT, ALBERT, Llama and Qwen2: a dropped layer equals a bypassed
one, and the pruned model reloads exactly through save_pretrained / from_pretrained."""

import pytest
import torch

from finlight.errors import FinlightError
from finlight.prune.surgery import bypass, drop_layers, drop_unit, family, layer_list, parameter_count, units
from helpers import IDS, MASK, albert, bert, logits, qwen2


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def reload_exactly(model, tmp_path):
    """save_pretrained → from_pretrained: no missing / unexpected / mismatched weight, the same outputs."""
    model.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    torch.testing.assert_close(logits(loaded.eval()), logits(model), rtol=0, atol=0)
    return loaded


@pytest.mark.parametrize("build,kind", [(bert, "encoder"), (llama, "decoder")])
def test_dropping_a_layer_equals_bypassing_it_and_reloads(build, kind, tmp_path):
    model = build()
    assert family(model) == kind and units(model) == [("layer", 0), ("layer", 1), ("layer", 2)]
    full = logits(model)
    with bypass(model, ("layer", 1)):
        bypassed = logits(model)
    torch.testing.assert_close(logits(model), full, rtol=0, atol=0)  # the hook is gone
    assert not torch.allclose(bypassed, full)
    before = parameter_count(model)
    kept = layer_list(model)[2]
    drop_unit(model, ("layer", 1))
    assert model.config.num_hidden_layers == 2 and len(layer_list(model)) == 2 and layer_list(model)[1] is kept
    assert before - parameter_count(model) == sum(p.numel() for p in kept.parameters())
    torch.testing.assert_close(logits(model), bypassed, rtol=1e-6, atol=1e-6)
    loaded = reload_exactly(model, tmp_path)
    assert loaded.config.num_hidden_layers == 2


@pytest.mark.parametrize("build", [llama, qwen2])
def test_decoder_layer_idx_renumbered_and_cached_generation_works(build, tmp_path):
    model = build()
    drop_layers(model, [0])
    assert [layer.self_attn.layer_idx for layer in layer_list(model)] == [0, 1]
    prompt = IDS[:1, :4]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, min_new_tokens=6)
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, min_new_tokens=6)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, uncached)
    loaded = reload_exactly(model, tmp_path)
    assert [layer.self_attn.layer_idx for layer in layer_list(loaded)] == [0, 1]


def test_per_layer_config_lists_shrink(tmp_path):
    model = qwen2()
    drop_layers(model, [2])
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert reload_exactly(model, tmp_path).config.layer_types == ["full_attention", "sliding_attention"]


def test_albert_drops_a_repeat_not_weights(tmp_path):
    model = albert()
    assert family(model) == "albert" and units(model) == [("repeat", 2)]
    before = parameter_count(model)
    with bypass(model, ("repeat", 2)):
        two_repeats = logits(model)
        with torch.no_grad():
            hidden = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
        assert len(hidden) == 3
    assert model.config.num_hidden_layers == 3
    drop_unit(model, ("repeat", 2))
    assert model.config.num_hidden_layers == 2 and parameter_count(model) == before
    torch.testing.assert_close(logits(model), two_repeats, rtol=0, atol=0)
    reload_exactly(model, tmp_path)


def test_decoder_sublayer_bypass_zeroes_one_part():
    model = llama()
    assert ("attention", 0) in units(model, "sublayer") and len(units(model, "sublayer")) == 6
    full = logits(model)
    for unit in (("attention", 1), ("mlp", 1)):
        with bypass(model, unit):
            assert not torch.allclose(logits(model), full)
    torch.testing.assert_close(logits(model), full, rtol=0, atol=0)
    # the MLP of the last layer bypassed = the layer computed with its MLP output zeroed
    layer = layer_list(model)[2]
    seen = {}
    layer.register_forward_hook(lambda m, a, k, out: seen.setdefault("out", out), with_kwargs=True)
    layer.mlp.register_forward_hook(lambda m, a, out: seen.setdefault("mlp", out))
    logits(model)
    with torch.no_grad():
        expected_last_hidden = seen["out"] - seen["mlp"]
    seen.clear()
    with bypass(model, ("mlp", 2)):
        logits(model)
    torch.testing.assert_close(seen["out"], expected_last_hidden)
    drop_unit(model, ("mlp", 2))  # removed for good (tests/test_sublayer_surgery.py): no longer a bypass unit
    with pytest.raises(FinlightError, match="removed already; nothing to bypass"):
        with bypass(model, ("mlp", 2)):
            pass


def test_bad_requests_are_refused():
    model = bert()
    with pytest.raises(FinlightError, match="out of range"):
        drop_layers(model, [3])
    with pytest.raises(FinlightError, match="cannot drop all 3"):
        drop_layers(model, [0, 1, 2])
    with pytest.raises(FinlightError, match="granularity='sublayer'"):
        units(model, "sublayer")
    drop_layers(model, [0, 1])
    assert units(model) == []  # one layer left: nothing more to drop
