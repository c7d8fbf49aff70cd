"""Removing a decoder's attention or MLP for good (SAPLING / TrimLLM granularity) on tiny random-init Llama and
Phi models: removal equals bypass, the weights really go, the model reloads exactly with no missing key, the KV
cache stays right, and SuccessiveLayerDrop(granularity="sublayer") runs through the CLI."""

import json
import subprocess
import sys
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from finlight.prune.layer_drop import SuccessiveLayerDrop
from finlight.cli import run_cli
from finlight.core.removals import removal_aware_load
from finlight.errors import FinlightError
from finlight.prune.surgery import (RemovedAttention, RemovedMLP, bypass, count_sublayers, drop_layers, drop_unit,
                              layer_list, parameter_count, removed_parts, units)
from helpers import (IDS, ProbeMetric, RecordOptimizer, bert, cache_gap, load_4bit, logits, qwen2, save_pruned_llama,
                     sublayer_run_config)

PROMPT = IDS[:1, :4]


def llama(layers: int = 3, head: str = "causal"):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=2, num_labels=3)
    return (LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification)(config).eval()


def phi(layers: int = 3):
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    return PhiForCausalLM(PhiConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def mistral():
    """Every layer a sliding-window layer (window 4, shorter than the test sequences): one cache type."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, sliding_window=4, pad_token_id=0, eos_token_id=1,
        bos_token_id=2)).eval()


def qwen2_full():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reload(model, tmp_path, auto=None):
    """save_pretrained → Auto*.from_pretrained: no missing / unexpected / mismatched key, the same keys."""
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    with removal_aware_load():
        loaded, info = (auto or AutoModelForCausalLM).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert list(loaded.state_dict()) == list(model.state_dict())
    return loaded.eval()


def greedy(model, use_cache: bool) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(PROMPT, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=use_cache)


@pytest.mark.parametrize("build,part,own_norm", [
    (llama, "attention", "input_layernorm"), (llama, "mlp", "post_attention_layernorm"),
    (phi, "attention", None), (phi, "mlp", None)])
def test_removal_equals_bypass_and_frees_exactly_its_weights(build, part, own_norm):
    model = build()
    layer = layer_list(model)[1]
    module = layer.self_attn if part == "attention" else layer.mlp
    freed = params(module) + (params(getattr(layer, own_norm)) if own_norm else 0)
    with bypass(model, (part, 1)):
        bypassed = logits(model)
    before = parameter_count(model)
    drop_unit(model, (part, 1))
    assert before - parameter_count(model) == freed
    assert isinstance(getattr(layer, "self_attn" if part == "attention" else "mlp"), (RemovedAttention, RemovedMLP))
    if own_norm:
        assert isinstance(getattr(layer, own_norm), nn.Identity)
    else:  # Phi: the one norm still feeds the other part
        assert params(layer.input_layernorm) == 2 * 32
    torch.testing.assert_close(logits(model), bypassed, rtol=0, atol=1e-6)
    assert model.config.removed_sublayers == [[], [part], []]
    assert model.config.num_hidden_layers == 3 and count_sublayers(model) == 5
    assert (part, 1) not in units(model, "sublayer") and len(units(model, "sublayer")) == 5


@pytest.mark.parametrize("build", [llama, phi])
def test_save_load_round_trip_is_exact_and_needs_the_loader_hook(build, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build()
    drop_unit(model, ("attention", 0))
    drop_unit(model, ("mlp", 2))
    loaded = reload(model, tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert [removed_parts(layer) for layer in layer_list(loaded)] == [["attention"], [], ["mlp"]]
    assert parameter_count(loaded) == parameter_count(model)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["removed_sublayers"] == [["attention"], [], ["mlp"]]
    # without the post_init wrap (outside removal_aware_load), transformers builds full layers and initialises
    # the removed parts at random
    _, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert any(".self_attn." in k for k in info["missing_keys"])


@pytest.mark.parametrize("build", [llama, phi, mistral, qwen2_full])
def test_cached_generation_equals_uncached_after_removals_and_reload(build, tmp_path):
    model = build()
    drop_unit(model, ("attention", 0))
    drop_unit(model, ("mlp", 1))
    # the remaining attentions fill cache slots 0..A-1: slot 0 (get_seq_length) belongs to a real attention
    assert [getattr(layer.self_attn, "layer_idx", None) for layer in layer_list(model)] == [None, 0, 1]
    with torch.no_grad():
        cache = model(PROMPT, use_cache=True).past_key_values
    assert cache.get_seq_length() == PROMPT.shape[1]
    assert sum(1 for layer in cache.layers if layer.is_initialized) == 2
    assert cache_gap(model) < 1e-5
    cached = greedy(model, True)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, greedy(model, False))
    loaded = reload(model, tmp_path)
    assert [getattr(layer.self_attn, "layer_idx", None) for layer in layer_list(loaded)] == [None, 0, 1]
    assert cache_gap(loaded) < 1e-5
    assert torch.equal(greedy(loaded, True), cached)
    assert torch.equal(greedy(loaded, False), cached)


def test_whole_layer_drops_keep_the_record_aligned(tmp_path):
    model = llama(4)
    drop_unit(model, ("attention", 1))
    drop_unit(model, ("mlp", 2))
    drop_layers(model, [0])
    assert model.config.removed_sublayers == [["attention"], ["mlp"], []]
    assert [getattr(layer.self_attn, "layer_idx", None) for layer in layer_list(model)] == [None, 0, 1]
    # the last part of a layer takes the layer with it
    before = logits(model)
    with bypass(model, ("mlp", 0)):
        expected = logits(model)
    assert not torch.allclose(before, expected)
    drop_unit(model, ("mlp", 0))
    assert model.config.num_hidden_layers == 2 and model.config.removed_sublayers == [["mlp"], []]
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-6)
    loaded = reload(model, tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert cache_gap(loaded) < 1e-5 and torch.equal(greedy(loaded, True), greedy(loaded, False))


def test_sequence_classifier_round_trip_and_checkpoint_rebuild(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    from finlight.core.backbone import backbone_state, rebuild_backbone

    model = llama(head="seq-cls")
    drop_unit(model, ("attention", 2))
    drop_unit(model, ("mlp", 0))
    loaded = reload(model, tmp_path, AutoModelForSequenceClassification)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    # a finlight checkpoint rebuilds the architecture with from_config, then loads the weights strictly
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
                                        pad_token="<pad>", unk_token="<unk>")
    rebuilt, _ = rebuild_backbone(backbone_state(model, tokenizer))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(logits(rebuilt.eval()), logits(model), rtol=0, atol=0)


def test_bad_requests_are_refused():
    model = llama()
    drop_unit(model, ("attention", 1))
    with pytest.raises(FinlightError, match="attention of layer 1 was already removed"):
        drop_unit(model, ("attention", 1))
    with pytest.raises(FinlightError, match="removed already; nothing to bypass"):
        with bypass(model, ("attention", 1)):
            pass
    with pytest.raises(FinlightError, match="out of range"):
        drop_unit(model, ("mlp", 3))
    with pytest.raises(FinlightError, match="granularity='sublayer'.*decoders; this is an encoder"):
        drop_unit(bert(), ("attention", 0))
    with pytest.raises(FinlightError, match="mixes layer_types"):
        drop_unit(qwen2(), ("mlp", 0))
    single = llama(1)
    drop_unit(single, ("attention", 0))
    assert units(single, "sublayer") == []  # the MLP is all that is left of the only layer
    with pytest.raises(FinlightError, match="all that is left of the only layer"):
        drop_unit(single, ("mlp", 0))


def test_the_callback_refuses_what_it_cannot_do_at_sublayer_granularity():
    with pytest.raises(FinlightError, match="granularity='sublayer' scores attention / MLP by ablation"):
        SuccessiveLayerDrop(granularity="sublayer", method="block_influence", target_param_ratio=0.5)
    with pytest.raises(FinlightError, match="target_sublayers"):
        SuccessiveLayerDrop(granularity="sublayer", target_layers=2)
    with pytest.raises(FinlightError, match="target_sublayers counts attention / MLP parts"):
        SuccessiveLayerDrop(target_sublayers=2)
    callback = SuccessiveLayerDrop(granularity="sublayer", target_param_ratio=0.5)
    with pytest.raises(FinlightError, match="granularity='sublayer'.*this is an encoder"):
        callback.on_fit_start(SimpleNamespace(world_size=1), SimpleNamespace(model=bert(), adapter_only=False))


def test_sublayer_stop_criteria():
    model = llama()
    first = layer_list(model)[0]
    full, mlp = parameter_count(model), params(first.mlp) + params(first.post_attention_layernorm)
    by_ratio = SuccessiveLayerDrop(granularity="sublayer", target_param_ratio=(full - mlp) / full)
    by_parts = SuccessiveLayerDrop(granularity="sublayer", target_sublayers=4)
    for callback in (by_ratio, by_parts):
        callback.on_fit_start(SimpleNamespace(world_size=1), SimpleNamespace(model=model, adapter_only=False))
        assert not callback._reached_target(model)
    drop_unit(model, ("mlp", 0))  # exactly at the ratio
    assert by_ratio._reached_target(model) and not by_parts._reached_target(model)
    drop_unit(model, ("attention", 2))
    assert by_parts._reached_target(model)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("bitsandbytes"), reason="bitsandbytes not installed")
def test_a_pruned_decoder_loads_in_4_bit(tmp_path):
    """bitsandbytes swaps the Linear layers after __init__: the stand-ins are in place by then, so the saved keys
    fit exactly. Widths are multiples of 32 (this CPU's 4-bit kernels need it)."""
    save_pruned_llama(tmp_path)
    quantized = load_4bit(tmp_path, "cpu", torch.float32)
    layers = layer_list(quantized)
    assert isinstance(layers[0].self_attn, RemovedAttention) and isinstance(layers[2].mlp, RemovedMLP)
    assert type(layers[1].self_attn.q_proj).__name__ == "Linear4bit"
    assert torch.equal(greedy(quantized, True), greedy(quantized, False))


@pytest.mark.slow
def test_sublayer_schedule_through_the_cli(in_tmp, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = sublayer_run_config(in_tmp)
    fit = run_cli(["fit", "--config", config])
    module, trainer = fit.model, fit.trainer
    model = module.model
    assert count_sublayers(model) == 3
    removed = [removed_parts(layer) for layer in layer_list(model)]
    assert model.config.removed_sublayers == removed and sum(map(len, removed)) + 3 == 2 * len(removed)

    log_dir = in_tmp / "logs" / "trimllm_tiny" / "version_0"
    drops = json.loads((log_dir / "layer_drop.json").read_text())["drops"]
    assert [d["epoch"] for d in drops] == [1, 2, 3] and [d["sublayers_after"] for d in drops] == [5, 4, 3]
    for d in drops:
        part, index = d["dropped"]
        assert part in ("attention", "mlp") and f"{part}.{index}" in d["scores"]
        assert len(d["scores"]) == d["sublayers_before"]  # every remaining part was scored
        assert d["score"] == min(d["scores"].values()) == d["scores"][f"{part}.{index}"]
        assert d["metric_before"] - d["metric_after"] == pytest.approx(d["score"], abs=1e-5)
        assert d["params_after"] < d["params_before"]
    events = EventAccumulator(str(log_dir)).Reload()
    assert [e.value for e in events.Scalars("layer_drop/sublayers")] == [5, 4, 3]
    named = [json.loads(e.tensor_proto.string_val[0]) for e in events.Tensors("layer_drop/dropped/text_summary")]
    assert named == [d["dropped"] for d in drops]  # TensorBoard names each unit too

    # the optimizer holds exactly the remaining trainable parameters
    recorder = next(c for c in trainer.callbacks if isinstance(c, RecordOptimizer))
    final_params = recorder.seen[-1][0]
    assert {id(p) for p in final_params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(final_params) == len({id(p) for p in final_params})

    # the pruned checkpoint rebuilds the same architecture and gives the same metrics as the model in memory
    in_memory = pl.Trainer(logger=False, enable_progress_bar=False).test(module, datamodule=fit.datamodule)[0]
    tested = run_cli(["test", "--config", config, "--ckpt_path", "last"])
    assert [removed_parts(layer) for layer in layer_list(tested.model.model)] == removed
    for key in ("test/acc", "test/macro_f1"):
        assert float(tested.trainer.callback_metrics[key]) == pytest.approx(in_memory[key], abs=1e-6), key

    # export in a fresh process (finlight's loaders wrap their own loads there), then reload
    from transformers import AutoModelForCausalLM

    last = in_tmp / "checkpoints" / "trimllm_tiny" / "version_0" / "last.ckpt"
    done = subprocess.run([sys.executable, "-m", "finlight", "export", "--ckpt_path", str(last), "--output_dir",
                           str(in_tmp / "export")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with removal_aware_load():
        exported, info = AutoModelForCausalLM.from_pretrained(in_tmp / "export", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert list(exported.state_dict()) == list(model.state_dict())
    torch.testing.assert_close(logits(exported.eval()), logits(model.eval()), rtol=0, atol=0)


def test_a_collapse_after_a_sublayer_drop_restores_the_model_before_it(in_tmp, one_thread):
    config = sublayer_run_config(in_tmp, "trim_collapse", "helpers.ProbeMetric", monitor="val/probe",
                                 tolerance=0.5)
    fit = run_cli(["fit", "--config", config])
    module, trainer = fit.model, fit.trainer
    assert trainer.current_epoch == 2  # stopped after epoch 1's validation
    assert count_sublayers(module.model) == 6 and not any(getattr(module.model.config, "removed_sublayers", []))
    history = json.loads((in_tmp / "logs" / "trim_collapse" / "version_0" / "layer_drop.json").read_text())["drops"]
    assert history[0]["sublayers_after"] == 5 and history[0]["dropped"][0] in ("attention", "mlp")
    assert history[1]["reverted"] and history[1]["sublayers_after"] == 6
    probe = next(c for c in trainer.callbacks if isinstance(c, ProbeMetric))
    again = pl.Trainer(logger=False, enable_progress_bar=False).validate(module, datamodule=fit.datamodule)[0]
    assert again["val/macro_f1"] == pytest.approx(probe.first_macro_f1, abs=1e-6)
