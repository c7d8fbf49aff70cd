"""``trainer.precision: auto``: the decision per hardware, what the CLI records, explicit settings winning, and
fp32 losses under bf16 autocast."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from finlight.cli import run_cli
from finlight.core import precision as precision_module
from finlight.core.precision import choose_precision

from helpers import tiny_config

AVX2 = {"fma", "avx", "avx2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX2", AVX2, "32-true"),
    ("AVX512", AVX512, "32-true"),  # AVX-512 without BF16: autocast only adds casts
    ("AVX512", AVX512_BF16, "bf16-mixed"),
    ("AVX512", AMX, "bf16-mixed"),
    ("AVX2", AMX, "32-true"),  # bf16 hardware, but torch told to dispatch AVX2 kernels
])
def test_cpu_choice_follows_the_bf16_instructions(capability, flags, expected):
    precision, reason = choose_precision("cpu", capability, flags)
    assert precision == expected
    if expected == "bf16-mixed":
        assert ("amx_bf16" if "amx_bf16" in flags else "avx512_bf16") in reason
    else:
        assert capability in reason


def test_cuda_choice_follows_bf16_support():
    assert choose_precision("cuda", cuda_bf16=True, cuda_name="H100") == ("bf16-mixed", "CUDA device H100 supports bf16")
    precision, reason = choose_precision("cuda", cuda_bf16=False, cuda_name="T4")
    assert precision == "32-true" and "no bf16" in reason
    assert choose_precision("mps")[0] == "32-true"


@pytest.fixture
def cpu_with(monkeypatch):
    """Unpin `auto` (conftest pins fp32) and make the CPU look like ``flags`` with ``capability`` kernels."""
    def fake(capability: str, flags: set[str]):
        monkeypatch.delenv(precision_module.ENV_PIN, raising=False)
        monkeypatch.setattr(precision_module, "cpu_capability", lambda: capability)
        monkeypatch.setattr(precision_module, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return fake


def _validate(in_tmp, *extra):
    config = tiny_config(in_tmp, trainer={"limit_val_batches": 1})
    cli = run_cli(["validate", "--config", config, *extra])
    folder = Path(cli.trainer.log_dir)
    return cli, json.loads((folder / "precision.json").read_text()), yaml.safe_load((folder / "config.yaml").read_text())


def test_auto_is_the_default_and_is_printed_and_recorded(in_tmp, cpu_with, capsys):
    cpu_with("AVX512", AMX)
    cli, record, config = _validate(in_tmp)
    assert cli.trainer.precision == "bf16-mixed"
    assert record["requested"] == "auto" and record["precision"] == record["trainer_precision"] == "bf16-mixed"
    assert "amx_bf16" in record["reason"] and "amx_bf16" in record["hardware"]["cpu_flags"]
    assert config["trainer"]["precision"] == "auto"  # the saved config stays portable to other machines
    lines = [line for line in capsys.readouterr().out.splitlines() if "precision auto" in line]
    assert lines == ["finlight: precision auto → bf16-mixed (CPU has amx_bf16 + avx512_bf16, torch kernels AVX512)"]

    cpu_with("AVX2", AVX2)
    cli, record, _ = _validate(in_tmp, "--trainer.precision", "auto")
    assert cli.trainer.precision == "32-true" and record["requested"] == "auto" and "AVX2" in record["reason"]


def test_an_explicit_precision_wins(in_tmp, cpu_with, capsys):
    cpu_with("AVX512", AMX)
    cli, record, config = _validate(in_tmp, "--trainer.precision", "32-true")
    assert cli.trainer.precision == "32-true"
    assert record == {"precision": "32-true", "reason": "set explicitly", "requested": "32-true", "hardware": {},
                      "trainer_precision": "32-true"}
    assert "precision auto" not in capsys.readouterr().out
    cpu_with("AVX2", AVX2)
    cli, record, _ = _validate(in_tmp, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed" and record["requested"] == "bf16-mixed"


def test_bad_precision_is_still_refused(in_tmp):
    from jsonargparse import ArgumentError

    with pytest.raises(ArgumentError, match="trainer.precision"):
        run_cli(["validate", "--config", tiny_config(in_tmp), "--trainer.precision", "fast"])


def test_loss_and_metrics_stay_fp32_under_bf16_autocast(tiny_hf_dir, monkeypatch):
    from finlight.core import classifier as classifier_module
    from finlight.core.classifier import SequenceClassifier
    from finlight.core.backbone import load_pretrained

    module = SequenceClassifier(backbone=str(tiny_hf_dir))
    model, tokenizer = load_pretrained(str(tiny_hf_dir), ["positive", "negative", "neutral"])
    module._install(model, tokenizer, ["positive", "negative", "neutral"])
    module.eval()  # no dropout: the loss is compared with one computed by hand
    module.register_buffer("class_weights", torch.tensor([1.0, 2.0, 0.5]), persistent=False)
    seen = {}
    real_loss = classifier_module.weighted_cross_entropy

    def spy(logits, labels, weights, smoothing):
        seen["logits"] = logits.dtype
        return real_loss(logits, labels, weights, smoothing)

    monkeypatch.setattr(classifier_module, "weighted_cross_entropy", spy)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = tokenizer(["Profit rose.", "The plant will close with heavy job losses."], padding=True, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": torch.tensor([0, 1])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = module.training_step(batch, 0)
        module._evaluation_step(batch, "val")
    assert raw.dtype == torch.bfloat16  # autocast really ran the backbone in bf16
    assert seen["logits"] == torch.float32 and loss.dtype == torch.float32
    assert module.val_metrics.compute()["acc"].dtype == torch.float32
    reference = real_loss(raw.float(), batch["labels"], module.class_weights, 0.0)
    assert float(loss) == pytest.approx(float(reference), abs=1e-6)


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX2", AVX2, "torch"),
    ("AVX512", AVX512, "torch"),
    ("AVX512", AVX512_BF16, "torch-bf16"),
    ("AVX2", AMX, "torch"),
])
def test_the_predictor_auto_backend_follows_the_same_rule(tiny_hf_dir, cpu_with, capability, flags, expected):
    from finlight.deploy.predictor import Predictor

    cpu_with(capability, flags)
    predictor = Predictor.load(str(tiny_hf_dir))  # an exported HF directory: a torch backend
    assert predictor.backend == expected
    assert predictor.backend_reason == choose_precision("cpu", capability, flags)[1]
    probabilities = predictor.predict_proba(["Operating profit rose.", "Shares were flat."])
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_the_predictor_auto_backend_honours_the_pin_and_explicit_backends(tiny_hf_dir, cpu_with, monkeypatch,
                                                                          capsys):
    from finlight.deploy.predictor import Predictor, main

    cpu_with("AVX512", AMX)
    monkeypatch.setenv(precision_module.ENV_PIN, "32-true")
    pinned = Predictor.load(str(tiny_hf_dir))
    assert (pinned.backend, pinned.backend_reason) == ("torch", f"{precision_module.ENV_PIN}=32-true")
    explicit = Predictor.load(str(tiny_hf_dir), backend="torch")
    assert (explicit.backend, explicit.backend_reason) == ("torch", "")
    monkeypatch.delenv(precision_module.ENV_PIN)
    main([str(tiny_hf_dir), "Operating profit rose."])  # the command line names its choice on stderr
    captured = capsys.readouterr()
    assert "finlight: backend torch-bf16 (CPU has amx_bf16 + avx512_bf16, torch kernels AVX512)" in captured.err
    assert json.loads(captured.out.splitlines()[0])["text"] == "Operating profit rose."
