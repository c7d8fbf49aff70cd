"""A dendritic fit SIGKILLed in the middle of an epoch (its own process) and resumed with ``--ckpt_path last`` ends
exactly where an uninterrupted run ends: same switches, same validation numbers."""

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")

from helpers import run_finlight as finlight  # noqa: E402


def switch_epochs(folder: Path, experiment: str) -> list[int]:
    import torch

    checkpoint = torch.load(folder / "checkpoints" / experiment / "version_0" / "last.ckpt", weights_only=False)
    return next(v for k, v in checkpoint["callbacks"].items() if k.startswith("PAITracker"))["switch_epochs"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_dendritic_run(in_tmp):
    from helpers import dendritic_config

    from finlight.cli import run_cli

    config = dendritic_config(in_tmp, max_epochs=4)  # smoke mode: switches after epochs 0, 1, 2
    straight = run_cli(["fit", "--config", config, "--experiment", "straight"]).trainer.callback_metrics
    # a real crash in its own process, killed in epoch 2: last.ckpt was written after epoch 1's validation,
    # before the tracker's switch for it
    killed = finlight("fit", "--config", "dendritic.yaml", "--experiment", "killed",
                      "--trainer.callbacks+=conftest.KillAtBatch", "--trainer.callbacks.epoch=2",
                      "--trainer.callbacks.batch=1", cwd=in_tmp, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert switch_epochs(in_tmp, "killed") == [0]
    resumed = run_cli(["fit", "--config", config, "--experiment", "killed", "--ckpt_path", "last"])
    assert sorted(os.listdir(in_tmp / "checkpoints" / "killed")) == ["version_0"]  # resumed in place
    assert switch_epochs(in_tmp, "killed") == switch_epochs(in_tmp, "straight") == [0, 1, 2]
    for key in ("val/loss", "val/acc", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(float(straight[key]), abs=1e-6), key
