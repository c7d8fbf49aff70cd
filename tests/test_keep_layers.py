"""`SequenceClassifier(keep_layers=…)`: a shallow model cut from a pretrained backbone's own layers (a 3-layer
MiniLM for the SAPLING study, a student cut from its teacher), on a tiny local 4-layer BERT."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SENTENCES
from finlight.cli import main, run_cli
from finlight.core.backbone import load_pretrained
from finlight.core.classifier import SequenceClassifier
from finlight.errors import FinlightError
from helpers import one_line_error, tiny_config

LABELS = ["negative", "neutral", "positive"]
LAYER = "bert.encoder.layer."


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory) -> Path:
    """A 4-layer tiny BERT (no classification head of ours: it is initialised at load) saved like a download."""
    from transformers import BertConfig, BertForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    path = tmp_path_factory.mktemp("tiny_bert4")
    tokenizer = train_wordpiece_tokenizer([t for ts in SENTENCES.values() for t in ts] * 3, vocab_size=400)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cut_module(directory, keep) -> SequenceClassifier:
    module = SequenceClassifier(backbone=str(directory), label_names=LABELS, keep_layers=keep)
    module.setup("fit")
    return module


def layer_weights(state: dict, index: int) -> dict:
    prefix = f"{LAYER}{index}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize("keep, kept", [(2, [0, 1]), (3, [0, 1, 2]), ([1, 3], [1, 3]), (4, [0, 1, 2, 3])])
def test_the_cut_keeps_exactly_the_named_pretrained_layers(tiny4_dir, keep, kept):
    pretrained = load_file(str(tiny4_dir / "model.safetensors"))
    full, _ = load_pretrained(str(tiny4_dir), LABELS)
    model = cut_module(tiny4_dir, keep).model
    assert model.config.num_hidden_layers == len(kept) == len(model.bert.encoder.layer)
    # the parameter count falls by exactly the removed layers
    removed = [i for i in range(4) if i not in kept]
    removed_params = sum(p.numel() for i in removed for p in full.bert.encoder.layer[i].parameters())
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters()) == removed_params
    # layer j of the cut model is the pretrained file's layer kept[j]; the embeddings are the file's too
    state = model.state_dict()
    for j, i in enumerate(kept):
        expected, got = layer_weights(pretrained, i), layer_weights(state, j)
        assert expected and expected.keys() == got.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=f"layer {j} ← {i}: {name}")
    for name, value in pretrained.items():
        if name.startswith("bert.embeddings."):
            torch.testing.assert_close(state[name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_a_cut_run_reloads_exactly_from_its_checkpoint_for_test_and_export(in_tmp, tiny4_dir):
    config = tiny_config(in_tmp, name="cut", model={"backbone": str(tiny4_dir), "learning_rate": 1e-3,
                                                    "keep_layers": [0, 2]},
                         trainer={"max_epochs": 1, "limit_train_batches": 3})
    fit = run_cli(["fit", "--config", config])
    best = fit.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["keep_layers"] == [0, 2]
    assert checkpoint["finlight"]["backbone"]["config"]["num_hidden_layers"] == 2

    inputs_text = ["Operating profit rose to EUR 12 million.", "The company has about 400 employees."]
    tokenizer = fit.model.tokenizer
    inputs = tokenizer(inputs_text, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = fit.model.eval()(inputs["input_ids"], inputs["attention_mask"])
        # the plain Hugging Face forward (full last layer, no [CLS]-only shortcut): what an export computes
        expected_full = fit.model.model(**inputs).logits
    torch.testing.assert_close(expected_full, expected, rtol=1e-5, atol=1e-6)

    # test --ckpt_path best: the 2-layer model, rebuilt from the checkpoint (nothing of the 4-layer one built)
    test = run_cli(["test", "--config", config, "--ckpt_path", "best"])
    assert test.model.model.config.num_hidden_layers == 2 and len(test.model.model.bert.encoder.layer) == 2
    # a config that names neither the backbone nor the cut: the checkpoint alone rebuilds it
    other = tiny_config(in_tmp, name="other", model={"backbone": "finlight-tests/unreachable-model"})
    alone = run_cli(["test", "--config", other, "--ckpt_path", best])
    # export: a plain Hugging Face directory of the cut model
    from transformers import AutoModelForSequenceClassification

    main(["export", "--ckpt_path", best, "--output_dir", "exported"])
    exported = AutoModelForSequenceClassification.from_pretrained("exported").eval()
    assert exported.config.num_hidden_layers == 2
    with torch.no_grad():
        for got in (test.model.eval()(inputs["input_ids"], inputs["attention_mask"]),
                    alone.model.eval()(inputs["input_ids"], inputs["attention_mask"])):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(exported(**inputs).logits, expected_full, rtol=0, atol=0)


@pytest.mark.parametrize("keep, message", [
    (0, "model.keep_layers=0: at least one layer must be kept"),
    ([], "model.keep_layers=[]: list the layers to keep"),
    ([0, 0, 1], "model.keep_layers=[0, 0, 1]: layer 0 is listed twice"),
    ([2, 0], "model.keep_layers=[2, 0]: list the indices in increasing order"),
    ([-1, 0], "model.keep_layers=[-1, 0]: layer -1 is out of range"),
    (True, "model.keep_layers=True: give a number of layers"),
])
def test_bad_values_are_refused_when_the_module_is_built(tiny4_dir, keep, message):
    with pytest.raises(FinlightError) as error:
        SequenceClassifier(backbone=str(tiny4_dir), label_names=LABELS, keep_layers=keep)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("keep, message", [
    (5, "model.keep_layers=5: the backbone has only 4 layers"),
    ([0, 4], "model.keep_layers=[0, 4]: layer 4 is out of range for the 4-layer backbone (indices 0..3)"),
])
def test_out_of_range_is_refused_once_the_backbone_has_loaded(tiny4_dir, keep, message):
    with pytest.raises(FinlightError) as error:
        cut_module(tiny4_dir, keep)
    assert str(error.value) == message


def test_keep_layers_with_scratch_is_refused():
    with pytest.raises(FinlightError, match="model.keep_layers cuts a pretrained backbone.*scratch.num_layers"):
        SequenceClassifier(scratch={"num_layers": 2}, label_names=LABELS, keep_layers=1)


def test_the_command_line_reports_a_bad_cut_in_one_line(in_tmp, tiny4_dir, capsys):
    config = tiny_config(in_tmp, model={"backbone": str(tiny4_dir)}, trainer={"max_epochs": 1})
    line = one_line_error(capsys, ["fit", "--config", config, "--model.init_args.keep_layers", "[0, 9]"])
    assert line == ("finlight: error: model.keep_layers=[0, 9]: layer 9 is out of range for the 4-layer backbone "
                    "(indices 0..3)")
    line = one_line_error(capsys, ["fit", "--config", config, "--model.init_args.keep_layers", "[1, 1]"])
    assert line.startswith("finlight: error: model.keep_layers=[1, 1]: layer 1 is listed twice")


def test_a_distillation_student_can_be_cut_from_a_pretrained_model(tiny4_dir):
    """The distillation study's student: 2 layers cut from the teacher's own (pretrained) layers."""
    from finlight.distill.student import DistillationStudent

    student = DistillationStudent(loss="ce", backbone=str(tiny4_dir), label_names=LABELS, keep_layers=2)
    student.setup("fit")
    assert student.model.config.num_hidden_layers == 2
    pretrained = load_file(str(tiny4_dir / "model.safetensors"))
    torch.testing.assert_close(layer_weights(student.model.state_dict(), 1), layer_weights(pretrained, 1),
                               rtol=0, atol=0)
