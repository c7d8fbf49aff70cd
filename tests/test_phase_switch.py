"""PhaseSwitch (gradual unfreezing + discriminative LRs): units and groups against hand-computed values, which
weights train in each phase of a real fit, the LR schedule of every group, and an exact resume across a switch."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn

from finlight.core.callbacks.phase_switch import (GradualUnfreeze, PhaseSwitch, discriminative_groups, find_units,
                                                   gradual_phases, resolve)
from finlight.core.optim import adamw_param_groups
from finlight.errors import FinlightError

from conftest import scratch_fit_config


def tiny_bert(layers: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=16, num_labels=3,
                                                    max_position_embeddings=16))


def unit_of(name: str) -> str:
    """The unit a BertForSequenceClassification weight belongs to, by its name (independent of find_units)."""
    if name.startswith("bert.embeddings."):
        return "embeddings"
    if name.startswith("bert.encoder.layer."):
        return "layer." + name.split(".")[3]
    assert name.startswith(("bert.pooler.", "classifier.")), name
    return "head"


# ------------------------------------------------------------------------------------------------ pure parts
def test_units_of_a_bert_classifier_top_down():
    model = tiny_bert(3)
    units, path = find_units(model)
    assert path == "bert.encoder.layer"
    assert [(u.name, u.depth) for u in units] == [("head", 0), ("layer.2", 1), ("layer.1", 2), ("layer.0", 3),
                                                  ("embeddings", 4)]
    owner = {id(p): u.name for u in units for m in u.modules for p in m.parameters()}
    names = [n for n, _ in model.named_parameters()]
    assert {n: owner[id(p)] for n, p in model.named_parameters()} == {n: unit_of(n) for n in names}


def test_groups_lrs_and_weight_decay_hand_computed():
    model = tiny_bert(3)
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-3)
    units, _ = find_units(model)
    groups, origin = discriminative_groups(optimizer.param_groups, units, 0.5)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr == pytest.approx({"head": 1e-3, "head.no_decay": 1e-3, "layer.2": 5e-4, "layer.2.no_decay": 5e-4,
                                "layer.1": 2.5e-4, "layer.1.no_decay": 2.5e-4, "layer.0": 1.25e-4,
                                "layer.0.no_decay": 1.25e-4, "embeddings": 6.25e-5, "embeddings.no_decay": 6.25e-5})
    assert origin == [0, 1] * 5
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every weight exactly once
    for g in groups:
        members = [names[id(p)] for p in g["params"]]
        assert {unit_of(n) for n in members} == {g["unit"]}
        no_decay = [n.endswith("bias") or "LayerNorm" in n for n in members]
        assert all(no_decay) if g["name"].endswith(".no_decay") else not any(no_decay), g["name"]
        assert g["weight_decay"] == (0.0 if g["name"].endswith(".no_decay") else 0.01)
    head = [names[id(p)] for p in groups[0]["params"]]
    assert sorted(head) == ["bert.pooler.dense.weight", "classifier.weight"]


def test_decoder_layers_and_head():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=1, pad_token_id=0))
    units, path = find_units(model)
    assert path == "model.layers"
    owner = {id(p): u.name for u in units for m in u.modules for p in m.parameters()}
    by_unit = {}
    for n, p in model.named_parameters():
        by_unit.setdefault(owner[id(p)], set()).add(n.split(".")[0] if owner[id(p)] == "head" else n.rsplit(".", 1)[0])
    assert by_unit["embeddings"] == {"model.embed_tokens"}
    assert sorted(name for name, p in model.named_parameters() if owner[id(p)] == "head") == ["model.norm.weight",
                                                                                             "score.weight"]
    assert resolve(["model.layers.0", "top-1"], units, path) == {"layer.0", "layer.1"}


def test_train_entries_resolve_to_units():
    units, path = find_units(tiny_bert(3))
    assert resolve("all", units, path) == {"head", "layer.2", "layer.1", "layer.0", "embeddings"}
    assert resolve(["head", "top-2"], units, path) == {"head", "layer.2", "layer.1"}
    for alias in ("layer.0", "layers.0", "encoder.layer.0", "bert.encoder.layer.0"):
        assert resolve([alias], units, path) == {"layer.0"}
    for bad, message in [("top-4", "has 3 layers"), ("top-0", "has 3 layers"), ("encoder.layer.3", "has 3 layers"),
                         ("model.layers.0", "layers are bert.encoder.layer.N"), ("pooler", "cannot read")]:
        with pytest.raises(FinlightError, match=message):
            resolve([bad], units, path)


def test_gradual_schedule_expands_one_layer_per_phase():
    units, path = find_units(tiny_bert(3))
    phases = gradual_phases(GradualUnfreeze(every_epochs=2), 3)
    assert [p.epoch for p in phases] == [0, 2, 4, 6, 8]
    assert [resolve(p.train, units, path) for p in phases] == [
        {"head"}, {"head", "layer.2"}, {"head", "layer.2", "layer.1"}, {"head", "layer.2", "layer.1", "layer.0"},
        {"head", "layer.2", "layer.1", "layer.0", "embeddings"}]
    assert len(gradual_phases(GradualUnfreeze(every_steps=5, embeddings=False), 3)) == 4
    switch = PhaseSwitch(phases=[{"step": 0, "train": "head"}, {"step": 5, "train": "all"}])
    switch._resolved = switch.phases
    assert [switch.phase_at(epoch=0, step=s) for s in (0, 4, 5, 99)] == [0, 0, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of phases"),
    ({"phases": [{"epoch": 0, "train": "all"}], "gradual_unfreeze": {"every_epochs": 1}}, "exactly one of phases"),
    ({"gradual_unfreeze": {"every_epochs": 1, "every_steps": 3}}, "exactly one of every_epochs"),
    ({"gradual_unfreeze": {"every_epoch": 1}}, "unknown option"),
    ({"gradual_unfreeze": {"every_epochs": 1}, "lr_decay": 0.0}, "lr_decay"),
    ({"phases": [{"epoch": 1, "train": "all"}]}, "the first must be 0"),
    ({"phases": [{"epoch": 0, "train": "head"}, {"epoch": 0, "train": "all"}]}, "each later one larger"),
    ({"phases": [{"epoch": 0, "train": "head"}, {"step": 9, "train": "all"}]}, "all phases the same"),
    ({"phases": [{"epoch": 0, "train": []}]}, "empty 'train'"),
    ({"phases": [{"epoch": 0, "train": ["head", "top two"]}]}, "cannot read"),
    ({"phases": [{"epoch": 0, "train": "all", "hparams": {"learning_rate": 1.0}}]}, "cannot change"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(FinlightError, match=message):
        PhaseSwitch(**kwargs)


def test_refuses_lora_quantized_and_layerless_models():
    class Adapters(pl.LightningModule):
        adapter_only = True

        def __init__(self):
            super().__init__()
            self.model = tiny_bert(1)

    with pytest.raises(FinlightError, match="LoRA / quantized"):
        PhaseSwitch._network(Adapters())
    quantized = tiny_bert(1)
    quantized.is_loaded_in_4bit = True
    with pytest.raises(FinlightError, match="LoRA / quantized"):
        PhaseSwitch._network(_holding(quantized))
    with pytest.raises(FinlightError, match="no transformer layers found in Sequential"):
        find_units(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))


def _holding(model):
    module = pl.LightningModule()
    module.model = model
    return module


# ------------------------------------------------------------------------------------------------ real fits
class Probe(pl.Callback):
    """After each optimizer step: which weights may train, which changed, and each group's LR."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}  # the LR this step uses
        self.smoothing = pl_module.hparams.label_smoothing

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.model.named_parameters())
        self.rows.append({
            "epoch": trainer.current_epoch, "step": trainer.global_step - 1, "lrs": self.lrs,
            "smoothing": self.smoothing,
            "trainable": {n for n, p in params.items() if p.requires_grad},
            "changed": {n for n, p in params.items() if not torch.equal(p.detach(), self.before[n])},
            "groups": [[id(p) for p in g["params"]] for g in trainer.optimizers[0].param_groups]})


def phase_config(folder, switch: dict, name: str, epochs: int) -> str:
    return scratch_fit_config(folder, name, epochs,
                              [{"class_path": "finlight.core.callbacks.PhaseSwitch", "init_args": switch}])


def test_gradual_unfreezing_trains_only_the_phase_units_at_decayed_lrs(in_tmp, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finlight.cli import run_cli

    config = phase_config(in_tmp, {"gradual_unfreeze": {"every_epochs": 1}, "lr_decay": 0.5}, "gradual", epochs=4)
    cli = run_cli(["fit", "--config", config, "--trainer.callbacks+=test_phase_switch.Probe"])
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, Probe))
    expected = [{"head"}, {"head", "layer.1"}, {"head", "layer.1", "layer.0"},
                {"head", "layer.1", "layer.0", "embeddings"}]
    names = [n for n, _ in cli.model.model.named_parameters()]
    assert len(probe.rows) == 12
    for row in probe.rows:
        units = expected[row["epoch"]]
        assert row["trainable"] == {n for n in names if unit_of(n) in units}, row["epoch"]
        assert row["changed"] <= row["trainable"]  # frozen weights did not move (no step, no weight decay)
        assert {unit_of(n) for n in row["changed"]} == units  # and every unit of the phase did
        lrs = row["lrs"]
        schedule = 1 - row["step"] / 12  # linear decay, no warm-up, over 4 × 3 steps
        for unit, depth in [("head", 0), ("layer.1", 1), ("layer.0", 2), ("embeddings", 3)]:
            for group in (unit, f"{unit}.no_decay"):
                assert lrs[group] == pytest.approx(3e-3 * schedule * 0.5 ** depth, rel=1e-9), (row["step"], group)
        flat = [i for g in row["groups"] for i in g]
        assert len(flat) == len(set(flat)) == len(names)  # the groups never change, no weight twice
    assert all(p.requires_grad for p in cli.model.parameters())  # left as found after the fit

    events = EventAccumulator(str(in_tmp / "logs" / "gradual" / "version_0")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/phase", "lr-AdamW/head", "lr-AdamW/layer.0.no_decay", "lr-AdamW/embeddings"} <= scalars
    assert sorted({e.value for e in events.Scalars("train/phase")}) == [0, 1, 2, 3]


def test_resume_right_after_a_switch_matches_an_uninterrupted_run(in_tmp, one_thread):
    """Step-bounded phases (one switch mid epoch 1, one at the start of epoch 2) with a label-smoothing switch;
    the run crashes at the start of epoch 2, just after switching, and resumes from the end of epoch 1."""
    from finlight.cli import run_cli

    switch = {"lr_decay": 0.8, "phases": [
        {"step": 0, "train": ["head"]},
        {"step": 4, "train": ["head", "encoder.layer.1"], "hparams": {"label_smoothing": 0.1}},
        {"step": 6, "train": "all"}]}
    config = phase_config(in_tmp, switch, "steps", epochs=3)
    straight = run_cli(["fit", "--config", config, "--experiment", "straight",
                        "--trainer.callbacks+=test_phase_switch.Probe"])
    rows = next(c for c in straight.trainer.callbacks if isinstance(c, Probe)).rows
    assert [r["smoothing"] for r in rows] == [0.0] * 4 + [0.1] * 2 + [0.0] * 3
    assert [len({unit_of(n) for n in r["trainable"]}) for r in rows] == [1] * 4 + [2] * 2 + [4] * 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed",
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    last = in_tmp / "checkpoints" / "crashed" / "version_0" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 6 and saved["callbacks"]["PhaseSwitch"]["phase"] == 1
    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 3
    for key in ("val/loss", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == float(straight.trainer.callback_metrics[key]), key
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key

    changed = yaml.safe_load(open(config))
    changed["trainer"]["callbacks"][0]["init_args"]["lr_decay"] = 0.9
    (in_tmp / "changed.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(FinlightError, match="another phase schedule or lr_decay"):
        run_cli(["fit", "--config", "changed.yaml", "--experiment", "crashed", "--ckpt_path", "last",
                 "--trainer.max_epochs", "4"])
    del saved["callbacks"]["PhaseSwitch"]  # a checkpoint of a run without PhaseSwitch: its optimizer has 2 groups
    torch.save(saved, in_tmp / "plain.ckpt")
    with pytest.raises(FinlightError, match="trained without PhaseSwitch"):
        run_cli(["fit", "--config", config, "--experiment", "plain", "--ckpt_path", "plain.ckpt"])


def test_a_bad_setting_in_yaml_is_one_line_from_the_cli(in_tmp, capsys):
    from finlight.cli import main

    config = phase_config(in_tmp, {"gradual_unfreeze": {"every_epochs": 1}, "lr_decay": 1.5}, "bad", epochs=1)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", config])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == "finlight: error: PhaseSwitch: lr_decay=1.5: must be in (0, 1]"


@pytest.mark.slow
def test_sigkill_right_after_a_switch_then_resume_matches_an_uninterrupted_run(in_tmp):
    """A real crash (SIGKILL, no clean-up) one step after the switch to phase 2; the resume from the last
    checkpoint (end of epoch 1, phase 1) switches again at the same step and ends with the same weights."""
    import signal

    from helpers import run_finlight as finlight

    switch = {"lr_decay": 0.8, "phases": [
        {"step": 0, "train": ["head"]},
        {"step": 4, "train": ["head", "encoder.layer.1"], "hparams": {"label_smoothing": 0.1}},
        {"step": 6, "train": "all"}]}
    config = phase_config(in_tmp, switch, "killed", epochs=3)
    finlight("fit", "--config", config, "--experiment", "straight", cwd=in_tmp)
    killed = finlight("fit", "--config", config, "--experiment", "killed", "--trainer.callbacks+=conftest.KillAtBatch",
                      "--trainer.callbacks.epoch=2", "--trainer.callbacks.batch=1", cwd=in_tmp, check=False)
    assert killed.returncode == -signal.SIGKILL
    folder = in_tmp / "checkpoints" / "killed" / "version_0"
    saved = torch.load(folder / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["callbacks"]["PhaseSwitch"]["phase"] == 1
    finlight("fit", "--config", config, "--experiment", "killed", "--ckpt_path", "last", cwd=in_tmp)
    want = torch.load(in_tmp / "checkpoints" / "straight" / "version_0" / "last.ckpt", weights_only=True)
    got = torch.load(folder / "last.ckpt", weights_only=True)
    assert got["global_step"] == want["global_step"] == 9
    assert got["callbacks"]["PhaseSwitch"]["phase"] == want["callbacks"]["PhaseSwitch"]["phase"] == 2
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for key, tensor in want["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][key]), key
