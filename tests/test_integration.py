"""Real data from ../shared/data: training from scratch learns, and the shipped configs run on it."""

import json
from pathlib import Path

import pytest

from finlight.cli import run_cli

from conftest import PHRASEBANK_ALL, TOXICITY_CSV

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# PhraseBank AllAgree test split (226 sentences: 139 neutral, 57 positive, 30 negative). Always predicting the
# majority class gives macro-F1 = F1(neutral)/3 = (2·0.615/1.615)/3 ≈ 0.25 and accuracy 0.615.
# Measured with this recipe (the quickstart's bert-tiny shape from scratch, 6 epochs, lr 1e-3, seed 42):
# test macro-F1 0.744, accuracy 0.832. 0.60 is far above the baseline and leaves room for thread-count noise,
# while a model that learnt nothing (or a broken label mapping / split) cannot reach it.
MAJORITY_MACRO_F1 = 0.254
REQUIRED_MACRO_F1 = 0.60


@pytest.mark.slow
@pytest.mark.integration
def test_from_scratch_on_phrasebank_allagree_beats_the_majority_baseline(in_tmp):
    config = str(REPO / "configs" / "quickstart_scratch.yaml")
    args = ["--config", config, "--experiment", "pb", *QUIET,
            "--data.init_args.path", str(PHRASEBANK_ALL), "--data.init_args.split_ratios", "[0.8, 0.1, 0.1]",
            "--data.init_args.batch_size", "32", "--model.init_args.scratch.vocab_size", "4000"]
    run_cli(["fit", *args, "--trainer.max_epochs", "6"])
    test = run_cli(["test", *args, "--ckpt_path", "best"])
    report = json.loads((Path(test.trainer.log_dir) / "test_metrics.json").read_text())
    data = json.loads((Path(test.trainer.log_dir) / "data_report.json").read_text())
    assert data["sizes"] == {"train": 1811, "val": 226, "test": 226}
    assert data["dropped"]["malformed lines (no '@label')"]["count"] == 1
    macro_f1 = report["metrics"]["test/macro_f1"]
    print(f"PhraseBank AllAgree from scratch: test macro-F1 {macro_f1:.4f}, acc {report['metrics']['test/acc']:.4f}")
    assert macro_f1 > REQUIRED_MACRO_F1 > MAJORITY_MACRO_F1


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("config, data_path", [
    ("finbert_phrasebank.yaml", PHRASEBANK_ALL),
    ("bert_tiny_toxicity.yaml", TOXICITY_CSV),
])
def test_reference_configs_run_with_a_local_tiny_backbone(in_tmp, tiny_hf_dir, config, data_path):
    args = ["--config", str(REPO / "configs" / config), *QUIET,
            "--model.init_args.backbone", str(tiny_hf_dir), "--data.init_args.path", str(data_path)]
    fit = run_cli(["fit", *args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
                   "--trainer.limit_val_batches", "2"])
    assert fit.trainer.current_epoch == 2
    names = fit.datamodule.label_names
    test = run_cli(["test", *args, "--ckpt_path", "best", "--trainer.limit_test_batches", "2"])
    report = json.loads((Path(test.trainer.log_dir) / "test_metrics.json").read_text())
    assert report["label_names"] == names and f"test/f1_{names[-1]}" in report["metrics"]
    if config.startswith("bert_tiny_toxicity"):
        assert names == ["non_toxic", "toxic"]
        weights = fit.datamodule.class_weights
        assert weights[1] > 4 * weights[0]  # ~10 % toxic → balanced weights ≈ 0.56 / 4.9
        assert fit.trainer.lr_scheduler_configs[0].interval == "epoch"
