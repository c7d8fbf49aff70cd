"""Removal-aware loading (`finlight.core.removals`): importing finlight leaves transformers alone; finlight's
loaders rebuild a sub-layer-pruned export exactly; a model whose recorded removals were not built (plain
transformers, or an architecture the wrap cannot rebuild) is a one-line error, never random parts."""

import pytest
import torch

from finlight.core.removals import RemovedAttention, RemovedMLP, check_removals_built, removal_aware_load
from finlight.errors import FinlightError
from helpers import logits


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 50)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<unk>")), pad_token="<pad>",
                                   unk_token="<unk>", eos_token="</s>")


def pruned_llama_export(path, head: str):
    """A 3-layer Llama (causal LM or classifier) without layer 0's attention and layer 2's MLP, saved with a
    tokenizer; returns the model in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from finlight.prune.surgery import drop_unit

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=2, bos_token_id=1, num_labels=3)
    model = (LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification)(config).eval()
    drop_unit(model, ("attention", 0))
    drop_unit(model, ("mlp", 2))
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return model


def test_importing_finlight_leaves_post_init_alone_and_the_block_restores_it():
    from transformers import PreTrainedModel

    import finlight.core.backbone  # noqa: F401
    import finlight.deploy.predictor  # noqa: F401
    import finlight.prune.surgery  # noqa: F401

    original = PreTrainedModel.post_init
    assert not hasattr(original, "__wrapped__")
    with removal_aware_load():
        assert PreTrainedModel.post_init.__wrapped__ is original
        with removal_aware_load():  # nested: the outer wrap stays
            assert PreTrainedModel.post_init.__wrapped__ is original
        assert PreTrainedModel.post_init.__wrapped__ is original
    assert PreTrainedModel.post_init is original
    with pytest.raises(RuntimeError, match="boom"):
        with removal_aware_load():
            raise RuntimeError("boom")
    assert PreTrainedModel.post_init is original


def test_finlight_loaders_rebuild_a_pruned_export_exactly_and_a_plain_load_is_caught(tmp_path):
    from transformers import AutoModelForCausalLM

    from finlight.causal_lm.classifier import load_causal_pretrained
    from finlight.core.backbone import load_pretrained
    from finlight.deploy.onnx import load_source

    causal = pruned_llama_export(tmp_path / "causal", "causal")
    classifier = pruned_llama_export(tmp_path / "seq", "seq-cls")

    # plain transformers: the removed parts come back with random weights (only a warning says so) ...
    plain, info = AutoModelForCausalLM.from_pretrained(tmp_path / "causal", output_loading_info=True)
    assert any(".self_attn." in k for k in info["missing_keys"]) and any(".mlp." in k for k in info["missing_keys"])
    assert not any(isinstance(m, (RemovedAttention, RemovedMLP)) for m in plain.modules())
    # ... which finlight refuses in one line
    with pytest.raises(FinlightError, match=r"^plain: config.removed_sublayers records 2 removed .* has 0"):
        check_removals_built(plain, "plain")

    loaded, _ = load_causal_pretrained(str(tmp_path / "causal"))
    torch.testing.assert_close(logits(loaded.eval()), logits(causal), rtol=0, atol=0)
    for model in (load_source(str(tmp_path / "seq"))[0],
                  load_pretrained(str(tmp_path / "seq"), ["negative", "neutral", "positive"])[0]):
        check_removals_built(model)
        torch.testing.assert_close(logits(model.eval()), logits(classifier), rtol=0, atol=0)


def test_recorded_removals_the_loader_cannot_build_fail_loudly(tmp_path):
    """A GPT-2 config that records a removed MLP (edited by hand: surgery refuses GPT-2): its stack is ``h``, not
    ``layers``, so nothing can stand in; finlight's loader says so instead of returning a random MLP."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from finlight.causal_lm.classifier import load_causal_pretrained

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                               removed_sublayers=[["mlp"], []])).save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    with pytest.raises(FinlightError, match=r"records 1 removed attention / MLP parts, but the GPT2\w+ built has 0"):
        load_causal_pretrained(str(tmp_path))
    with pytest.raises(FinlightError, match="records 1 removed"):
        with removal_aware_load():
            AutoModelForCausalLM.from_pretrained(tmp_path)
