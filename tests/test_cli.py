"""The CLI end to end, in-process, with a tiny from-scratch model on the demo set."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from finlight.cli import main, run_cli
from helpers import one_line_error, tiny_config

REPO = Path(__file__).resolve().parents[1]


def best_score(trainer) -> float:
    return float(trainer.checkpoint_callback.best_model_score)


@pytest.mark.slow
def test_fit_test_predict_export_round_trip(in_tmp):
    config = tiny_config(in_tmp)
    fit = run_cli(["fit", "--config", config])
    run_dir = in_tmp / "logs" / "tiny" / "version_0"
    assert {"config.yaml", "data_report.json", "hparams.yaml"} <= set(os.listdir(run_dir))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    assert {"val/confusion_raw", "val/confusion_normalized"} <= set(events.Tags()["images"])
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/macro_f1", "val/macro_f1_best", "val/f1_negative", "lr-AdamW/pg1"} <= scalars
    assert len(events.Scalars("val/macro_f1")) == 2  # one per epoch, the sanity check not logged
    ckpt_dir = in_tmp / "checkpoints" / "tiny" / "version_0"
    best = fit.trainer.checkpoint_callback.best_model_path
    assert (ckpt_dir / "last.ckpt").is_file() and Path(best).resolve().parent == ckpt_dir
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 1  # the newest state, best or not

    # validate the best checkpoint in a new CLI: the same val/macro_f1 that selected it
    validate = run_cli(["validate", "--config", config, "--ckpt_path", "best"])
    assert float(validate.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(best_score(fit.trainer), abs=1e-6)

    # test twice: identical numbers, written to test_metrics.json with the confusion matrix
    first = run_cli(["test", "--config", config, "--ckpt_path", "best"])
    second = run_cli(["test", "--config", config, "--ckpt_path", best])
    reports = [json.loads((Path(c.trainer.log_dir) / "test_metrics.json").read_text()) for c in (first, second)]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["checkpoint"] == best
    test_size = first.datamodule.report["sizes"]["test"]
    assert sum(map(sum, reports[0]["confusion_matrix"])) == test_size
    assert 0.0 <= reports[0]["metrics"]["test/macro_f1"] <= 1.0
    assert (Path(first.trainer.log_dir) / "test_confusion_normalized.png").stat().st_size > 1000

    # predict: one row per input, in input order, probabilities summing to one, label = argmax
    predict = run_cli(["predict", "--config", config, "--ckpt_path", "best"])
    with open(Path(predict.trainer.log_dir) / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == predict.datamodule.predict_texts and len(rows) == test_size
    for row in rows:
        probs = {n: float(row[f"prob_{n}"]) for n in ("negative", "neutral", "positive")}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(probs, key=probs.get)

    # export: a plain Hugging Face directory that gives the module's logits
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    main(["export", "--ckpt_path", best, "--output_dir", "exported"])
    model = AutoModelForSequenceClassification.from_pretrained("exported").eval()
    tokenizer = AutoTokenizer.from_pretrained("exported")
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    module = predict.model.eval()
    inputs = tokenizer(["Operating profit rose to EUR 12 million."], return_tensors="pt")
    with torch.no_grad():
        expected = module(inputs["input_ids"], inputs["attention_mask"])
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_same_seed_gives_the_same_run(in_tmp):
    config = tiny_config(in_tmp, trainer={"max_epochs": 1})

    def outcome(*extra):
        metrics = run_cli(["fit", "--config", config, *extra]).trainer.callback_metrics
        return float(metrics["val/loss"]), float(metrics["val/macro_f1"])

    first, second = outcome(), outcome()
    assert first == second
    assert outcome("--seed_everything", "8", "--data.init_args.seed", "8")[0] != first[0]


def test_enable_checkpointing_false_fits_without_writing_a_checkpoint(in_tmp):
    config = tiny_config(in_tmp, trainer={"max_epochs": 1, "limit_train_batches": 2})
    cli = run_cli(["fit", "--config", config, "--trainer.enable_checkpointing", "false"])
    assert cli.trainer.checkpoint_callback is None and cli.trainer.global_step == 2
    assert not list(in_tmp.rglob("*.ckpt"))
    with_checkpoints = run_cli(["fit", "--config", config, "--experiment", "saved"])
    assert with_checkpoints.trainer.checkpoint_callback is not None and list(in_tmp.rglob("*.ckpt"))


def test_local_backbone_directory_fits(in_tmp, tiny_hf_dir):
    config = tiny_config(in_tmp, model={"backbone": str(tiny_hf_dir), "learning_rate": 1e-3},
                         trainer={"max_epochs": 1, "limit_train_batches": 3})
    cli = run_cli(["fit", "--config", config])
    assert cli.model.label_names == ["negative", "neutral", "positive"]
    assert cli.model.model.config.id2label[0] == "negative"


def test_print_config_resolves_defaults(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", tiny_config(in_tmp), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["scratch"]["hidden_size"] == 32
    assert printed["checkpoint"]["monitor"] == "val/macro_f1"


def test_config_typo_is_a_short_error(in_tmp, capsys):
    path = Path(tiny_config(in_tmp))
    path.write_text(path.read_text().replace("max_epochs", "max_epoch"))
    assert "max_epoch" in one_line_error(capsys, ["fit", "--config", str(path)])


def test_unknown_label_names_file_and_line(in_tmp, capsys):
    (in_tmp / "bad.csv").write_text("text,label\nProfit rose,positive\nProfit fell,bearish\n")
    config = tiny_config(in_tmp, data={"path": "bad.csv", "label_names": ["negative", "neutral", "positive"]})
    message = one_line_error(capsys, ["fit", "--config", config])
    assert message.startswith("finlight: error: bad.csv:3: unknown label 'bearish'")


def test_checkpoint_that_does_not_fit_is_refused(in_tmp, capsys):
    config = tiny_config(in_tmp, trainer={"max_epochs": 1, "limit_train_batches": 2})
    best = run_cli(["fit", "--config", config]).trainer.checkpoint_callback.best_model_path
    reordered = tiny_config(in_tmp, name="reordered", data={
        "path": "demo", "label_names": ["positive", "neutral", "negative"], "max_length": 48})
    message = one_line_error(capsys, ["test", "--config", reordered, "--ckpt_path", best])
    assert "trained on labels ['negative', 'neutral', 'positive']" in message
    torch.save({"state_dict": {"x": torch.zeros(1)}}, in_tmp / "foreign.ckpt")
    message = one_line_error(capsys, ["test", "--config", config, "--ckpt_path", str(in_tmp / "foreign.ckpt")])
    assert "foreign.ckpt: not a Lightning checkpoint" in message
    message = one_line_error(capsys, ["test", "--config", tiny_config(in_tmp, name="never_ran"), "--ckpt_path", "best"])
    assert "no finished run of experiment 'never_ran'" in message


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_starts_with_its_command_and_parses(config, capsys):
    path = REPO / "configs" / config
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m finlight ") and f"configs/{config}" in first
    command = first.split("python -m finlight ")[1].split()[0]  # the command the header runs
    with pytest.raises(SystemExit) as exit_info:
        if command in ("fit", "validate", "test", "predict", "models"):
            run_cli(["fit", "--config", str(path), "--print_config"])
        else:  # an extra command's own settings (e.g. tfidf)
            main([command, "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err


@pytest.mark.slow
def test_resume_from_last_continues_the_run_and_matches_an_uninterrupted_one(in_tmp):
    config = tiny_config(in_tmp, trainer={"max_epochs": 3})
    uninterrupted = run_cli(["fit", "--config", config, "--experiment", "straight"]).trainer.callback_metrics
    crash = ["--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed", *crash])
    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"])
    assert resumed.trainer.log_dir.endswith(os.path.join("crashed", "version_0"))  # same folder, not a new run
    assert not (in_tmp / "logs" / "crashed" / "version_1").exists()
    for key in ("val/loss", "val/macro_f1", "val/acc"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(float(uninterrupted[key]), abs=1e-6), key


@pytest.mark.slow
def test_a_checkpoint_is_evaluated_without_building_the_configured_backbone(in_tmp):
    """The checkpoint carries backbone config, tokenizer and weights: `test --ckpt_path` with a config that names
    an unreachable hub id (offline) must not try to load it, and scores exactly what the original config scores."""
    config = tiny_config(in_tmp)
    best = run_cli(["fit", "--config", config]).trainer.checkpoint_callback.best_model_path
    reference = run_cli(["test", "--config", config, "--ckpt_path", best]).trainer.callback_metrics
    hub_config = tiny_config(in_tmp, "hub", model={"backbone": "finlight-tests/unreachable-model"})
    with pytest.raises(Exception, match="unreachable-model"):  # without a checkpoint it needs the hub
        run_cli(["test", "--config", hub_config])
    tested = run_cli(["test", "--config", hub_config, "--ckpt_path", best]).trainer.callback_metrics
    for key in ("test/loss", "test/acc", "test/macro_f1"):
        assert float(tested[key]) == pytest.approx(float(reference[key]), abs=1e-6), key


def test_gradient_clipping_under_bf16_mixed_keeps_the_fused_adamw_step_and_clips(in_tmp):
    """Lightning refuses clipping with a fused optimizer under any mixed precision; bf16 has no scaler, so finlight
    clips as fp32 does and keeps the fused step."""
    config = tiny_config(in_tmp, trainer={"max_epochs": 1, "gradient_clip_val": 1.0, "limit_train_batches": 2,
                                          "limit_val_batches": 1})
    mixed = run_cli(["fit", "--config", config, "--trainer.precision", "bf16-mixed", "--experiment", "mixed"])
    assert mixed.trainer.optimizers[0].defaults["fused"] is True
    assert torch.isfinite(mixed.trainer.callback_metrics["train/loss"])
    plain = run_cli(["fit", "--config", config, "--trainer.precision", "32-true", "--experiment", "plain"])
    assert plain.trainer.optimizers[0].defaults["fused"] is True


def test_bf16_clipping_bounds_the_gradient_norm(in_tmp):
    """The clipping path finlight takes under bf16-mixed really clips (total norm ≤ the limit before each step)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from finlight.core.optim import clip_gradients

    class Probe:
        def __init__(self, trainer):
            self.trainer = trainer

    model = torch.nn.Linear(4, 4)
    model.weight.grad = torch.full_like(model.weight, 10.0)
    model.bias.grad = torch.full_like(model.bias, 10.0)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    trainer = type("T", (), {"precision_plugin": MixedPrecision("bf16-mixed", "cpu")})()
    clip_gradients(Probe(trainer), optimizer, 0.5, None)  # 20 × 10 = a norm of ~44.7 before
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)


def test_finlight_log_lines_follow_a_stderr_replaced_after_setup(monkeypatch):
    import io
    import logging
    import sys

    from finlight import cli

    logger = logging.getLogger("finlight")
    monkeypatch.setattr(logger, "handlers", [])
    first, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    cli._configure_logging()
    first.close()  # as pytest closes a captured stream after its test
    monkeypatch.setattr(sys, "stderr", later)
    logger.info("checkpoint written")
    assert later.getvalue() == "finlight INFO: checkpoint written\n"
