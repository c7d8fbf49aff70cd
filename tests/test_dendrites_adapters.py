"""Dendrites with LoRA and 4-bit NF4 backbones (tiny local Phi on CPU), what is refused and why, and DDP."""

from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")
pytest.importorskip("peft", reason="the lora extra is not installed")

from finlight.dendrites.perforate import DendriteOptions, adapter_state_dict, dendrite_count, select_modules  # noqa: E402
from finlight.errors import FinlightError  # noqa: E402
from finlight.core.adapters import LoraOptions, QuantizationOptions, apply_adapters  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "base_model.model.model.layers.0."
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


@pytest.fixture(scope="module")
def tiny_phi_dir(tmp_path_factory) -> Path:
    """A tiny Phi sequence classifier saved like a hub download (widths divisible by 32 for 4-bit on CPU)."""
    from conftest import SENTENCES
    from transformers import PhiConfig, PhiForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    path = tmp_path_factory.mktemp("tiny_phi")
    tokenizer = train_wordpiece_tokenizer([t for ts in SENTENCES.values() for t in ts] * 3, vocab_size=400)
    torch.manual_seed(0)
    names = ["negative", "neutral", "positive"]
    config = PhiConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, max_position_embeddings=128, num_labels=3,
                       pad_token_id=tokenizer.pad_token_id, id2label=dict(enumerate(names)),
                       label2id={n: i for i, n in enumerate(names)})
    PhiForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def lora_phi(path: Path, quantization=None):
    from transformers import AutoModelForSequenceClassification

    from finlight.core.adapters import SEQUENCE_HEADS, quantized_load_kwargs

    kwargs = quantized_load_kwargs(quantization, torch.device("cpu"), SEQUENCE_HEADS) if quantization else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **kwargs)
    return apply_adapters(model, LoraOptions(r=4, target_modules=["q_proj", "v_proj", "fc1"]), quantization,
                          False, "SEQ_CLS")


def test_lora_layers_are_units_and_frozen_or_8bit_layers_are_refused(tiny_phi_dir):
    model = lora_phi(tiny_phi_dir)
    # a LoRA layer is one unit (not its base_layer / lora_A / lora_B); frozen layers without LoRA are skipped
    assert select_modules(model, DendriteOptions(targets="linear")) == [LAYER + "self_attn.q_proj",
                                                                       LAYER + "self_attn.v_proj", LAYER + "mlp.fc1"]
    assert select_modules(model, DendriteOptions(targets="linear", include_head=True))[-1] == \
        "base_model.model.score.modules_to_save.default"  # peft's trained copy of the head, not original_module
    with pytest.raises(FinlightError, match=r"'base_model.model.model.layers.0.mlp.fc2' does not train"):
        select_modules(model, DendriteOptions(targets=[LAYER + "mlp.fc2"]))
    eight = lora_phi(tiny_phi_dir, QuantizationOptions(bits=8, compute_dtype="float32"))
    with pytest.raises(FinlightError, match="8-bit"):
        select_modules(eight, DendriteOptions(targets="linear"))


def test_8bit_dendritic_classifier_is_refused_at_construction():
    from finlight.dendrites.classifier import DendriticClassifier

    with pytest.raises(FinlightError, match="bits: 8 is not possible"):
        DendriticClassifier(backbone="some/model", quantization={"bits": 8}, lora={"r": 4})


def test_adapter_checkpoint_keeps_dendrites_and_drops_only_the_frozen_base():
    state = {"model.a.main_module.base_layer.weight": 1, "model.a.main_module.lora_A.default.weight": 2,
             "model.a.dendrite_module.layers.0.base_layer.weight": 3, "model.a.dendrites_to_top.0": 4,
             "model.norm.main_module.weight": 5}

    class Fake(torch.nn.Module):
        def named_parameters(self, remove_duplicate=True):
            return iter([("model.a.main_module.lora_A.default.weight", torch.nn.Parameter(torch.zeros(1))),
                         ("model.a.main_module.base_layer.weight",
                          torch.nn.Parameter(torch.zeros(1), requires_grad=False))])

    kept = adapter_state_dict(Fake(), state)
    assert sorted(kept) == ["model.a.dendrite_module.layers.0.base_layer.weight", "model.a.dendrites_to_top.0",
                            "model.a.main_module.lora_A.default.weight"]


def phi_config(folder: Path, phi_dir: Path, quantization: dict | None, name: str) -> str:
    from helpers import tiny_config

    model = {"backbone": str(phi_dir), "learning_rate": 3e-3,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": PROJECTIONS},
             "use_class_weights": True, "dendrites": {"smoke_test": True}}
    if quantization:  # the Phi-2 config's combination: NF4 base + LoRA + activation checkpointing
        model.update(quantization=quantization, gradient_checkpointing=True)
    path = Path(tiny_config(folder, name=name, trainer={"max_epochs": 4, "limit_train_batches": 2,
                                                        "limit_val_batches": 2}))
    config = yaml.safe_load(path.read_text())
    config["model"] = {"class_path": "finlight.dendrites.DendriticClassifier", "init_args": model}
    config["data"]["init_args"].update(batch_size=8, class_weights="balanced")
    path.write_text(f"# python -m finlight fit --config {path.name}\n" + yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("quantization", [None, {"bits": 4, "quant_type": "nf4", "compute_dtype": "float32"}],
                         ids=["lora", "lora_nf4"])
def test_lora_and_nf4_backbones_get_dendrites_and_checkpoints_rebuild(in_tmp, tiny_phi_dir, quantization):
    """Phi seq-cls + LoRA (+ NF4 base) + class weights: dendrites are added on the LoRA layers, the optimizer
    follows, and validate from the (adapter-only) last checkpoint reproduces the final metrics."""
    from finlight.dendrites.tracker import PAITracker, optimizer_parameter_ids
    from finlight.cli import run_cli

    config = phi_config(in_tmp, tiny_phi_dir, quantization, "phi")
    fit = run_cli(["fit", "--config", config])
    trainer, module = fit.trainer, fit.model
    tracker = next(c for c in trainer.callbacks if isinstance(c, PAITracker))
    assert tracker.switch_epochs == [0, 1, 2] and dendrite_count() == 3
    wrapped = {n for n, _ in module.model.named_modules() if n.endswith("dendrite_module.layers.2")}
    assert len(wrapped) == len(PROJECTIONS)  # a third dendrite on each LoRA layer
    assert optimizer_parameter_ids(trainer) == {id(p) for p in module.parameters() if p.requires_grad}
    checkpoint = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=False)
    saved = checkpoint["state_dict"]
    assert not any(".main_module.base_layer." in k for k in saved)  # the frozen base is not in the checkpoint
    assert any(".dendrite_module.layers.2.lora_A." in k for k in saved)
    scored = {k: float(trainer.callback_metrics[k]) for k in ("val/loss", "val/macro_f1")}
    validate = run_cli(["validate", "--config", config, "--ckpt_path", "last"])
    assert dendrite_count() == 3
    for key, value in scored.items():
        assert float(validate.trainer.callback_metrics[key]) == pytest.approx(value, abs=1e-5), key


def test_ddp_is_refused_before_anything_is_built():
    """A 2-process DDP trainer, never launched: setup raises before it loads or perforates anything."""
    import lightning.pytorch as pl

    from finlight.dendrites.classifier import DendriticClassifier

    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    module = DendriticClassifier(scratch={"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                          "intermediate_size": 64, "vocab_size": 100}, label_names=["a", "b"])
    module.trainer = trainer
    with pytest.raises(FinlightError, match="refuses DDP-wrapped models .*2 processes"):
        module.setup("fit")
    assert module.model is None


@pytest.mark.slow
def test_nf4_lora_dendritic_fit_resumes_exactly(in_tmp, tiny_phi_dir):
    """The Phi-2 combination (NF4 + LoRA + checkpointing) crashed after two switches and resumed from its
    adapter-only last.ckpt (fresh base load + saved dendrites) ends where the uninterrupted run ends."""
    from finlight.cli import run_cli

    config = phi_config(in_tmp, tiny_phi_dir, {"bits": 4, "quant_type": "nf4", "compute_dtype": "float32"}, "phi")
    straight = run_cli(["fit", "--config", config, "--experiment", "straight"]).trainer.callback_metrics
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed", "--trainer.callbacks+=conftest.InterruptAtEpoch",
                 "--trainer.callbacks.epoch=2"])
    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"])
    assert dendrite_count() == 3
    for key in ("val/loss", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(float(straight[key]), abs=1e-6), key
