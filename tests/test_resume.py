"""A fit SIGKILLed in the middle of an epoch and resumed with ``--ckpt_path last`` ends where an
uninterrupted run ends (deterministic mode), and the crash left no broken checkpoint behind."""

import json
import os
import signal
from pathlib import Path

import pytest

from helpers import run_finlight as finlight, tiny_config


def final_val_metrics(folder: Path, experiment: str) -> dict:
    """Validate the run's last checkpoint in a fresh process: the model the run ended with."""
    finlight("validate", "--config", str(folder / "sk.yaml"), "--experiment", experiment, "--ckpt_path", "last",
             cwd=folder)
    runs = sorted((folder / "logs" / experiment).iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((runs[-1] / "val_metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(in_tmp):
    tiny_config(in_tmp, name="sk", trainer={"max_epochs": 3})
    finlight("fit", "--config", "sk.yaml", "--experiment", "straight", cwd=in_tmp)
    killed = finlight("fit", "--config", "sk.yaml", "--experiment", "killed",
                      "--trainer.callbacks+=conftest.KillAtBatch", "--trainer.callbacks.epoch=2",
                      "--trainer.callbacks.batch=5", cwd=in_tmp, check=False)
    assert killed.returncode == -signal.SIGKILL
    folder = in_tmp / "checkpoints" / "killed" / "version_0"
    assert not list(folder.glob("*.tmp"))  # no half-written checkpoint
    finlight("fit", "--config", "sk.yaml", "--experiment", "killed", "--ckpt_path", "last", cwd=in_tmp)
    assert sorted(os.listdir(in_tmp / "checkpoints" / "killed")) == ["version_0"]  # resumed in place
    straight, resumed = final_val_metrics(in_tmp, "straight"), final_val_metrics(in_tmp, "killed")
    for key in ("val/loss", "val/acc", "val/macro_f1"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


@pytest.mark.slow
def test_causal_lm_classifier_resumes_to_the_same_result(in_tmp):
    """The resume machinery is the CLI's (checkpoint + RNG callbacks), so every module gets it: here the
    instruction-tuned decoder (from scratch, constrained scoring)."""
    import yaml

    from finlight.cli import run_cli

    config = {
        "seed_everything": 5,
        "trainer": {"max_epochs": 3, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_train_batches": 6, "limit_val_batches": 2},
        "model": {"class_path": "finlight.causal_lm.CausalLMClassifier", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                        "intermediate_size": 64, "vocab_size": 600}, "learning_rate": 3e-3}},
        "data": {"class_path": "finlight.causal_lm.InstructionDataModule", "init_args": {
            "path": "demo", "label_names": ["negative", "neutral", "positive"], "max_length": 96, "batch_size": 8}},
    }
    path = in_tmp / "lm.yaml"
    path.write_text("# python -m finlight fit --config lm.yaml\n" + yaml.safe_dump(config))
    straight = run_cli(["fit", "--config", str(path), "--experiment", "straight"]).trainer.callback_metrics
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", str(path), "--experiment", "crashed",
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    resumed = run_cli(["fit", "--config", str(path), "--experiment", "crashed", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 3
    for key in ("val/loss", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(float(straight[key]), abs=1e-6), key
