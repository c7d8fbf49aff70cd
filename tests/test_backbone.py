"""Backbone loading: local directories, head reordering, offline hub ids, decoders, checkpoint rebuild."""

import time

import pytest
import torch

from finlight.errors import FinlightError
from finlight.core.backbone import ScratchConfig, backbone_state, build_from_scratch, load_pretrained, rebuild_backbone

from conftest import SENTENCES

TEXTS = [t for ts in SENTENCES.values() for t in ts]


def test_pretrained_head_rows_are_reordered_to_our_label_names(tiny_hf_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    original = AutoModelForSequenceClassification.from_pretrained(tiny_hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    model, _ = load_pretrained(str(tiny_hf_dir), ["Negative", "neutral", "POSITIVE"])
    model.eval()
    inputs = tokenizer(TEXTS[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs, ours = original(**inputs).logits, model(**inputs).logits
    # theirs: positive, negative, neutral → ours: negative, neutral, positive
    torch.testing.assert_close(ours, theirs[:, [1, 2, 0]])
    assert model.config.id2label == {0: "Negative", 1: "neutral", 2: "POSITIVE"}


def test_other_label_sets_get_a_fresh_head(tiny_hf_dir):
    model, _ = load_pretrained(str(tiny_hf_dir), ["non_toxic", "toxic"])
    assert model.config.num_labels == 2 and model.classifier.out_features == 2


def test_unreachable_hub_id_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FinlightError, match=r"model.backbone='nobody/no-such-model'.*hf download nobody/no-such-model"):
        load_pretrained("nobody/no-such-model", ["a", "b"])
    assert time.monotonic() - start < 10
    with pytest.raises(FinlightError, match="no such directory"):
        load_pretrained("./models/missing", ["a", "b"])


def test_decoder_backbone_gets_a_pad_token(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=200)
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_pretrained(str(tmp_path), ["down", "up"])
    assert loaded.pad_token == "[SEP]" and model.config.pad_token_id == loaded.pad_token_id
    batch = loaded(["profit rose", "the company cut its full-year guidance"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 2)


def test_checkpoint_state_rebuilds_the_same_model():
    model, tokenizer = build_from_scratch(ScratchConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                        intermediate_size=64, vocab_size=300), ["a", "b", "c"], TEXTS)
    model.eval()
    state = backbone_state(model, tokenizer)
    rebuilt, rebuilt_tokenizer = rebuild_backbone(state)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert rebuilt_tokenizer.get_vocab() == tokenizer.get_vocab()
    inputs = tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    torch.testing.assert_close(rebuilt(**inputs).logits, model(**inputs).logits)


def test_scratch_config_is_checked():
    with pytest.raises(FinlightError, match="not divisible by num_heads"):
        build_from_scratch(ScratchConfig(hidden_size=30, num_heads=4), ["a", "b"], TEXTS)
    with pytest.raises(FinlightError, match="train split is empty"):
        build_from_scratch(ScratchConfig(), ["a", "b"], [])


def test_a_module_built_in_python_saves_plain_hparams(tmp_path):
    from finlight.core import SequenceClassifier

    module = SequenceClassifier(scratch=ScratchConfig(hidden_size=32, num_layers=1, num_heads=2), label_names=["a", "b"])
    assert module.hparams["scratch"]["hidden_size"] == 32 and module.scratch.hidden_size == 32
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    assert torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]["scratch"]["num_layers"] == 1


def test_a_head_of_the_wrong_width_is_refused_at_load_time():
    """Some transformers versions keep a checkpoint's head despite ``ignore_mismatched_sizes`` (5.17 with 4-bit
    loading): the mismatch must be named at load time, not surface as a shape error inside the loss."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    from finlight.core.backbone import _check_head, head_classes

    small = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    bert = BertForSequenceClassification(BertConfig(num_labels=3, **small))
    bert.classifier.weight = torch.nn.Parameter(torch.zeros(2, 16))  # built for 3, loaded with 2 rows (as 5.17)
    roberta = RobertaForSequenceClassification(RobertaConfig(num_labels=3, **small))
    assert head_classes(bert) == 2 and head_classes(roberta) == 3  # RoBERTa: classifier.dense → out_proj
    _check_head(roberta, ["negative", "neutral", "positive"], "roberta")  # fits: no error
    with pytest.raises(FinlightError, match=r"bert: the loaded classification head scores 2 classes, not 3"):
        _check_head(bert, ["negative", "neutral", "positive"], "bert")
