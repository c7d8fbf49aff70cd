"""`finlight.core.base.HFBackboneModule`: one checkpoint entry and reload for every module (encoder classifier,
causal-LM classifier, FinQA generator), and `restore_from_checkpoint` asking the class that wrote a checkpoint."""

import pytest
import torch

from finlight.core.backbone import CausalScratchConfig, ScratchConfig, build_causal_from_scratch, build_from_scratch
from finlight.errors import FinlightError
from helpers import IDS, MASK

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["profit rose sharply", "sales fell", "the company reported results", "shares were flat"] * 5


def _saved(module) -> dict:
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def test_sequence_classifier_entry_names_task_and_writer_and_rebuilds_the_same_model():
    from finlight.core.classifier import SequenceClassifier

    torch.manual_seed(0)
    scratch = ScratchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=200)
    module = SequenceClassifier(scratch=scratch)
    module._install(*build_from_scratch(scratch, LABELS, TEXTS), LABELS)
    checkpoint = _saved(module)
    entry = checkpoint["finlight"]
    assert entry["task"] == "sequence-classification" and not entry["adapter_only"] and entry["label_names"] == LABELS
    assert entry["written_by"] == "finlight.core.classifier.SequenceClassifier"

    fresh = SequenceClassifier(scratch=scratch)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    module.eval(), fresh.eval()
    torch.testing.assert_close(fresh(IDS, MASK), module(IDS, MASK), rtol=0, atol=0)


def test_decoder_modules_share_the_entry_and_refuse_each_others_checkpoints():
    from finlight.causal_lm.classifier import CausalLMClassifier
    from finlight.finqa.generator import FinQAGenerator

    scratch = CausalScratchConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                                  vocab_size=200)
    generator = FinQAGenerator(scratch=scratch, max_new_tokens=8)
    generator._install(*build_causal_from_scratch(scratch, TEXTS, []))
    generator.target = "program"
    checkpoint = _saved(generator)
    entry = checkpoint["finlight"]
    assert (entry["task"], entry["target"], entry["label_names"]) == ("finqa-generator", "program", [])
    assert entry["written_by"] == "finlight.finqa.generator.FinQAGenerator"
    assert "max_new_tokens" not in generator.hparams and generator.hparams["dtype"] == "float32"

    fresh = FinQAGenerator(scratch=scratch)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(fresh.eval()(IDS, MASK), generator.eval()(IDS, MASK), rtol=0, atol=0)

    classifier = CausalLMClassifier(scratch=scratch)
    with pytest.raises(FinlightError, match="not written by a finlight CausalLMClassifier .*finqa-generator"):
        classifier.on_load_checkpoint(checkpoint)
    with pytest.raises(FinlightError, match="set exactly one of model.backbone"):
        CausalLMClassifier(backbone="x", scratch=scratch)
    with pytest.raises(FinlightError, match="need pretrained weights .* a model.scratch decoder"):
        FinQAGenerator(scratch=scratch, lora={"r": 4})


def test_restore_asks_only_a_finlight_class_that_wrote_the_checkpoint():
    from finlight.core.restore import _writer_restore
    from finlight.dendrites.classifier import DendriticClassifier

    dendritic = {"finlight": {"written_by": "finlight.dendrites.classifier.DendriticClassifier"}}
    assert _writer_restore(dendritic) is DendriticClassifier.restore_hf_model
    older = {"finlight": {}, "hyper_parameters": {"_class_path": "finlight.dendrites.DendriticClassifier"}}
    assert _writer_restore(older) is DendriticClassifier.restore_hf_model  # the CLI's record, before written_by
    for writer in ("finlight.core.classifier.SequenceClassifier", "helpers.ProbeMetric", "os.path.join", ""):
        assert _writer_restore({"finlight": {"written_by": writer}}) is None
