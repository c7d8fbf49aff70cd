"""SuccessiveLayerDrop end to end through the CLI (tiny from-scratch 3-layer encoder on the demo set)."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from finlight.prune.layer_drop import SuccessiveLayerDrop, calibration_metric, hidden_state_scores
from finlight.cli import run_cli
from finlight.errors import FinlightError
from helpers import ProbeMetric, RecordOptimizer, drop_config


@pytest.mark.slow
def test_ablation_drops_to_target_and_pruned_checkpoint_reloads(in_tmp):
    config = drop_config(in_tmp, "sapling", extra_callbacks=[{"class_path": "helpers.RecordOptimizer"}])
    # keep every epoch's checkpoint: Lightning 2.6 rewrites last.ckpt only when a top-k checkpoint is saved
    fit = run_cli(["fit", "--config", config, "--checkpoint.save_top_k", "-1"])
    module, trainer = fit.model, fit.trainer
    assert module.model.config.num_hidden_layers == 1 and len(module.model.bert.encoder.layer) == 1

    # the optimizer holds exactly the remaining parameters after each drop, and the schedule continued
    recorder = next(c for c in trainer.callbacks if isinstance(c, RecordOptimizer))
    final_params, lr, step = recorder.seen[-1]
    assert {id(p) for p in final_params} == {id(p) for p in module.model.parameters() if p.requires_grad}
    assert len(final_params) == len(set(map(id, final_params)))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert step > 0 and scheduler.last_epoch == trainer.global_step  # fast-forwarded, then stepped on

    # layer_drop.json: one entry per drop, scores for every candidate, honest before/after numbers
    log_dir = in_tmp / "logs" / "sapling" / "version_0"
    report = json.loads((log_dir / "layer_drop.json").read_text())
    drops = report["drops"]
    assert [d["epoch"] for d in drops] == [1, 2] and [d["layers_after"] for d in drops] == [2, 1]
    assert len(drops[0]["scores"]) == 3 and len(drops[1]["scores"]) == 2
    assert drops[0]["score"] == min(drops[0]["scores"].values())
    assert drops[1]["params_after"] < drops[0]["params_after"] < report["initial_params"]
    # ablation score = metric before − metric with the layer bypassed = before − after for the dropped one
    for d in drops:
        assert d["metric_before"] - d["metric_after"] == pytest.approx(d["score"], abs=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir)).Reload()
    assert [e.value for e in events.Scalars("layer_drop/layers")] == [2, 1]

    # a checkpoint saved after the drops reloads with the pruned architecture and gives the same metrics
    in_memory = pl.Trainer(logger=False, enable_progress_bar=False).test(module, datamodule=fit.datamodule)[0]
    tested = run_cli(["test", "--config", config, "--ckpt_path", "last"])
    assert tested.model.model.config.num_hidden_layers == 1
    for key in ("test/acc", "test/macro_f1", "test/loss"):
        assert float(tested.trainer.callback_metrics[key]) == pytest.approx(in_memory[key], abs=1e-6), key
    # every epoch's checkpoint holds the depth it was validated at; the 2-layer one validates to its score
    saved = trainer.checkpoint_callback.best_k_models
    depth = {p: torch.load(p, weights_only=False)["finlight"]["backbone"]["config"]["num_hidden_layers"] for p in saved}
    assert sorted(depth.values()) == [1, 2, 3]
    middle = next(p for p, d in depth.items() if d == 2)
    validated = run_cli(["validate", "--config", config, "--ckpt_path", middle])
    assert validated.model.model.config.num_hidden_layers == 2
    assert float(validated.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(float(saved[middle]), abs=1e-6)


@pytest.mark.slow
def test_validation_collapse_restores_the_model_before_the_drop(in_tmp):
    config = drop_config(in_tmp, "collapse", epochs=4, tolerance=0.5, method="block_influence", monitor="val/probe",
                         extra_callbacks=[{"class_path": "helpers.ProbeMetric"}])
    fit = run_cli(["fit", "--config", config, "--checkpoint.save_top_k", "-1"])
    module, trainer = fit.model, fit.trainer
    assert trainer.current_epoch == 2  # stopped after epoch 1's validation, not at max_epochs
    assert module.model.config.num_hidden_layers == 3  # the model before the drop
    history = json.loads((in_tmp / "logs" / "collapse" / "version_0" / "layer_drop.json").read_text())["drops"]
    assert history[0]["layers_after"] == 2 and len(history[0]["scores"]) == 3
    assert history[1]["reverted"] and history[1]["layers_after"] == 3 and history[1]["value"] == 0.0
    # the restored weights are those of epoch 0 (before the drop and a further epoch of training)
    probe = next(c for c in trainer.callbacks if isinstance(c, ProbeMetric))
    again = pl.Trainer(logger=False, enable_progress_bar=False).validate(module, datamodule=fit.datamodule)[0]
    assert again["val/macro_f1"] == pytest.approx(probe.first_macro_f1, abs=1e-6)
    # the checkpoint written after the revert holds the restored 3-layer model, filed under that model's own
    # val/macro_f1 (not the pruned model's) — and the snapshot waited in CPU memory
    scores = {Path(p).name: float(v) for p, v in trainer.checkpoint_callback.best_k_models.items()}
    epoch1 = next(name for name in scores if name.startswith("epoch01"))
    saved = torch.load(Path(trainer.checkpoint_callback.dirpath) / epoch1, weights_only=True)
    assert saved["finlight"]["backbone"]["config"]["num_hidden_layers"] == 3
    assert scores[epoch1] == pytest.approx(probe.first_macro_f1, abs=1e-6)


def test_hidden_state_scores_mask_padding_and_metrics():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=32, num_labels=3)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    short = {"input_ids": ids, "attention_mask": torch.ones(1, 4, dtype=torch.long), "labels": torch.tensor([1])}
    padded = {"input_ids": torch.tensor([[5, 6, 7, 8, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]]),
              "labels": torch.tensor([1])}
    for method, n in (("block_influence", 1), ("angular_distance", 2)):
        scores = hidden_state_scores(model, [short], method, n)
        assert len(scores) == (3 if n == 1 else 2)
        assert hidden_state_scores(model, [padded], method, n) == pytest.approx(scores, abs=1e-5)

    class Wrapper(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

    logits = Wrapper()(ids, short["attention_mask"])
    assert calibration_metric(Wrapper(), [short], "loss") == pytest.approx(
        -float(torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([1]))), abs=1e-6)
    assert calibration_metric(Wrapper(), [short], "acc") == float(logits.argmax(-1).item() == 1)


def test_bad_settings_are_refused():
    with pytest.raises(FinlightError, match="target_layers or target_param_ratio"):
        SuccessiveLayerDrop()
    with pytest.raises(FinlightError, match="target_param_ratio=1.5"):
        SuccessiveLayerDrop(target_param_ratio=1.5)
    with pytest.raises(FinlightError, match="method='magic'"):
        SuccessiveLayerDrop(target_layers=2, method="magic")


@pytest.mark.slow
def test_a_monitor_that_is_not_logged_is_an_error(in_tmp, capsys):
    from helpers import one_line_error

    config = drop_config(in_tmp, "typo", epochs=1, monitor="val/macro-f1")
    message = one_line_error(capsys, ["fit", "--config", config, "--trainer.limit_train_batches", "2"])
    assert "SuccessiveLayerDrop.monitor='val/macro-f1' is not logged" in message and "val/macro_f1" in message


def test_targets_and_the_albert_candidate():
    from types import SimpleNamespace

    from helpers import albert, bert

    from finlight.prune.surgery import drop_layers, parameter_count

    model = bert()
    full = parameter_count(model)
    layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    by_ratio = SuccessiveLayerDrop(target_param_ratio=(full - layer) / full)
    by_ratio.initial_params = full
    assert not by_ratio._reached_target(model)
    drop_layers(model, [0])
    assert by_ratio._reached_target(model)  # exactly at the ratio
    by_depth = SuccessiveLayerDrop(target_layers=2)
    by_depth.initial_params = full
    assert by_depth._reached_target(model) and not SuccessiveLayerDrop(target_layers=1)._reached_target(model)

    shared = albert()  # one candidate, the last repeat; its parameters never shrink
    scores, drop = SuccessiveLayerDrop(target_layers=1)._score(SimpleNamespace(model=shared), [], 0.0)
    assert drop == [2] and scores == {2: 0.0}


def test_offloaded_copy_is_a_cpu_deep_copy_that_keeps_ties_and_trainability():
    from transformers import LlamaConfig, LlamaForCausalLM

    from finlight.prune.layer_drop import offloaded_copy

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    model.model.layers[0].mlp.requires_grad_(False)
    copied = offloaded_copy(model)
    assert copied.lm_head.weight is copied.model.embed_tokens.weight  # still tied: one tensor, copied once
    assert copied.lm_head.weight is not model.lm_head.weight
    original = dict(model.named_parameters())
    for name, p in copied.named_parameters():
        assert p.device.type == "cpu" and p.requires_grad == original[name].requires_grad
        assert torch.equal(p, original[name]) and p.data_ptr() != original[name].data_ptr()
    with torch.no_grad():
        copied.model.embed_tokens.weight.zero_()
    assert model.model.embed_tokens.weight.abs().sum() > 0  # independent storage


@pytest.mark.slow
def test_a_layer_drop_run_resumed_after_a_crash_ends_where_an_uninterrupted_one_ends(in_tmp):
    from conftest import InterruptAtEpoch  # noqa: F401  (class_path below)

    config = drop_config(in_tmp, "drops", epochs=3)
    straight = run_cli(["fit", "--config", config])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed",
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    # the checkpoint carries the validation the next snapshot is scored by (a revert files it under these)
    saved = torch.load(in_tmp / "checkpoints" / "crashed" / "version_0" / "last.ckpt", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("SuccessiveLayerDrop"))
    step, scores = state["last_validated"]
    assert step == saved["global_step"] and 0 <= scores["val/macro_f1"] <= 1 and "val/loss" in scores
    restored = SuccessiveLayerDrop(target_layers=1)
    restored.load_state_dict(state)
    assert restored._last_validated[0] == step
    assert float(restored._last_validated[1]["val/loss"]) == pytest.approx(scores["val/loss"])

    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"])
    assert resumed.model.model.config.num_hidden_layers == straight.model.model.config.num_hidden_layers == 1
    for key in ("val/loss", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(
            float(straight.trainer.callback_metrics[key]), abs=1e-6), key
    drops = [json.loads((in_tmp / "logs" / name / "version_0" / "layer_drop.json").read_text())["drops"]
             for name in ("drops", "crashed")]
    assert [d["dropped"] for d in drops[0]] == [d["dropped"] for d in drops[1]]
