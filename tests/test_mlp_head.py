"""`model.head_hidden`: an MLP classification head (finlight.core.heads), the equal-parameter control of the
dendrites study (reports/dendrites_minilm/): sizing, a fit → checkpoint → rebuild round trip, refused exports."""

from pathlib import Path

import pytest
import torch
import yaml

from finlight.cli import run_cli
from finlight.core.heads import (CONFIG_KEY, added_parameters, apply_recorded_head, hidden_for_extra_parameters,
                                 install_mlp_head)
from finlight.errors import FinlightError
from helpers import one_line_error, tiny_config

REPO = Path(__file__).resolve().parents[1]


def tiny_bert(num_labels: int = 3, hidden: int = 16):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    return BertForSequenceClassification(config)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("hidden", [1, 7, 64])
def test_installed_head_adds_exactly_the_computed_parameters_and_scores_the_classes(hidden):
    model = tiny_bert()
    before = count(model)
    assert install_mlp_head(model, hidden) == "classifier"
    assert count(model) - before == added_parameters(16, hidden, 3)
    head = model.classifier
    assert [type(m).__name__ for m in head] == ["Linear", "GELU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (16, hidden, 3)
    assert float(head[0].bias.detach().abs().sum()) == 0.0 and 0.005 < float(head[0].weight.detach().std()) < 0.05  # std 0.02 init
    assert getattr(model.config, CONFIG_KEY) == hidden
    logits = model(input_ids=torch.randint(0, 50, (2, 5))).logits
    assert logits.shape == (2, 3)


def test_width_for_a_parameter_budget_is_the_closest_one():
    for extra in (500, 2_366_976, 10_000):
        h = hidden_for_extra_parameters(extra, 384, 3)
        gap = abs(added_parameters(384, h, 3) - extra)
        assert gap <= abs(added_parameters(384, h + 1, 3) - extra) and gap <= abs(added_parameters(384, h - 1, 3) - extra)
        assert gap <= (384 + 1 + 3) // 2  # one hidden unit costs 388 parameters
    with pytest.raises(FinlightError, match="must be positive"):
        hidden_for_extra_parameters(0, 384, 3)


def test_recorded_head_is_rebuilt_from_the_config_alone():
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert()
    install_mlp_head(model, 9)
    rebuilt = apply_recorded_head(AutoModelForSequenceClassification.from_config(model.config))
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    ids = torch.randint(0, 50, (3, 6))
    model.eval(), rebuilt.eval()
    assert torch.equal(model(input_ids=ids).logits, rebuilt(input_ids=ids).logits)


def test_bad_widths_and_heads_are_refused():
    with pytest.raises(FinlightError, match="model.head_hidden=0"):
        install_mlp_head(tiny_bert(), 0)
    with pytest.raises(FinlightError, match="no linear layer with 5 outputs"):
        install_mlp_head(tiny_bert(), 4, num_classes=5)


def test_head_hidden_errors_are_one_line(in_tmp, capsys, tiny_hf_dir):
    line = one_line_error(capsys, ["fit", "--config", tiny_config(in_tmp), "--model.init_args.head_hidden", "0"])
    assert "head_hidden" in line
    config = tiny_config(in_tmp, "pretrained", model={"backbone": str(tiny_hf_dir), "learning_rate": 1e-3})
    line = one_line_error(capsys, ["fit", "--config", config, "--model.init_args.head_hidden", "8",
                                   "--model.init_args.lora.r", "4"])
    assert "model.head_hidden with model.lora / model.quantization is not supported" in line


def test_fit_checkpoint_rebuild_and_refused_hf_export(in_tmp, one_thread):
    """A head_hidden run: its checkpoint alone rebuilds the MLP head (test in a new CLI reproduces the
    validation numbers), restore gives the same logits, and a Hugging Face export is refused."""
    from finlight.core.restore import restore_from_checkpoint
    from finlight.deploy.export import export_hf

    config = tiny_config(in_tmp, trainer={"max_epochs": 1, "limit_train_batches": 3})
    args = ["--model.init_args.head_hidden", "24"]
    fit = run_cli(["fit", "--config", config, *args])
    model = fit.model.model
    assert getattr(model.config, CONFIG_KEY) == 24 and model.classifier[0].out_features == 24
    scored = {k: float(fit.trainer.callback_metrics[k]) for k in ("val/loss", "val/macro_f1")}
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    validate = run_cli(["validate", "--config", config, *args, "--ckpt_path", checkpoint])
    for key, value in scored.items():
        assert float(validate.trainer.callback_metrics[key]) == pytest.approx(value, abs=1e-6), key

    restored, tokenizer, labels, _ = restore_from_checkpoint(checkpoint)
    assert restored.classifier[3].out_features == len(labels) == 3
    batch = tokenizer(["Profit rose sharply.", "The plant will close."], return_tensors="pt", padding=True)
    trained = validate.model.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored.eval()(**batch).logits, trained(**batch).logits, atol=1e-6)
    with pytest.raises(FinlightError, match="MLP head"):
        export_hf(checkpoint, str(in_tmp / "exported"))
    with pytest.raises(FinlightError, match="MLP head"):
        validate.model.export_hf(str(in_tmp / "exported2"))


def study_configs():
    dendritic = yaml.safe_load((REPO / "configs" / "dendritic_minilm_phrasebank.yaml").read_text())
    control = yaml.safe_load((REPO / "configs" / "minilm_phrasebank_mlp_head.yaml").read_text())
    return dendritic, control


def test_study_configs_differ_from_each_other_only_where_they_say():
    dendritic, control = study_configs()
    baseline = yaml.safe_load((REPO / "configs" / "minilm_phrasebank.yaml").read_text())
    for name, config in (("dendritic", dendritic), ("control", control)):
        assert config["data"] == baseline["data"], name
        drop = lambda trainer: {k: v for k, v in trainer.items() if k != "max_epochs"}  # noqa: E731
        assert drop(config["trainer"]) == drop(baseline["trainer"]), name
        args = {k: v for k, v in config["model"]["init_args"].items() if k not in ("dendrites", "monitor", "head_hidden")}
        assert args == baseline["model"]["init_args"], name
    assert dendritic["trainer"]["max_epochs"] == control["trainer"]["max_epochs"]


def test_the_mlp_control_adds_what_one_dendrite_set_adds_on_minilm(prepared_encoders, tmp_path):
    """The study's fairness claim, measured: MiniLM-L6 with the dendritic config's targets gets one dendrite set
    (a real perforatedai switch); the parameters that set adds and uses (the dendrite layers and their output
    weights, not perforatedai's frozen copy of each wrapped layer) match the control's MLP head within one unit."""
    pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")
    from finlight.core.backbone import load_pretrained
    from finlight.dendrites.perforate import (as_dendrite_options, dendrite_count, import_pai, pai_guard, perforate,
                                              probe_output_ranks)

    dendritic, control = study_configs()
    labels = dendritic["data"]["init_args"]["label_names"]
    options = as_dendrite_options(dendritic["model"]["init_args"]["dendrites"])
    model, tokenizer = load_pretrained(str(prepared_encoders / "minilm-l6"), labels)
    batch = tokenizer(["Profit rose sharply.", "The plant will close."], return_tensors="pt", padding=True)
    model = perforate(model, options, probe_output_ranks(model, batch), str(tmp_path), torch.device("cpu"))
    GPA, _, _ = import_pai()
    GPA.pai_tracker.set_optimizer_instance(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0))
    model.train()
    for epoch in range(options.switch_every):  # the fixed schedule: a set after switch_every scores
        with pai_guard():
            model(**batch).logits.sum().backward()
        with pai_guard(str(tmp_path)):
            model, restructured, _ = GPA.pai_tracker.add_validation_score(0.5 + 0.01 * epoch, model)
        assert bool(restructured) == (epoch == options.switch_every - 1)
    assert dendrite_count() == 1
    working = sum(p.numel() for n, p in model.named_parameters()
                  if ".dendrite_module.layers." in n or ".dendrites_to_top." in n)
    shadow = sum(p.numel() for n, p in model.named_parameters() if ".dendrite_module.parent_module." in n)
    targets = dict(model.named_modules())
    wrapped = sum(p.numel() for t in options.targets for p in targets[t].main_module.parameters())
    assert shadow == wrapped == 2_363_136  # the copies: as large as the wrapped layers
    assert working == wrapped + sum(targets[t].main_module.out_features for t in options.targets) == 2_366_976
    head_extra = added_parameters(384, control["model"]["init_args"]["head_hidden"], len(labels))
    assert abs(head_extra - working) < 384 + 1 + len(labels)


def test_smollm2_dendritic_config_is_its_plain_twin_plus_dendrites():
    """reports/smollm2_dendrites/: the two rows differ only in the module class, its monitor and the dendrites,
    and the set arrives while max_epochs still leaves an epoch for it (switch after epoch switch_every - 1)."""
    plain = yaml.safe_load((REPO / "configs" / "smollm2_phrasebank_lora.yaml").read_text())
    dendritic = yaml.safe_load((REPO / "configs" / "smollm2_phrasebank_lora_dendritic.yaml").read_text())
    assert (plain["data"], plain["trainer"], plain["seed_everything"]) == \
        (dendritic["data"], dendritic["trainer"], dendritic["seed_everything"])
    extra = {k: v for k, v in dendritic["model"]["init_args"].items() if k not in plain["model"]["init_args"]}
    assert sorted(extra) == ["dendrites", "monitor"]
    assert {k: dendritic["model"]["init_args"][k] for k in plain["model"]["init_args"]} == plain["model"]["init_args"]
    assert dendritic["model"]["class_path"] == "finlight.dendrites.DendriticClassifier"
    assert extra["dendrites"]["switch_every"] < plain["trainer"]["max_epochs"]
    assert extra["dendrites"]["max_dendrites"] == 1
