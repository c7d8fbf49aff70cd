"""Scale-out: the same config under Lightning DDP (2 CPU processes, gloo) agrees with one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_config


def finlight(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run([sys.executable, "-m", "finlight", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(folder: Path, experiment: str, version: int, stage: str) -> dict:
    return json.loads((folder / "logs" / experiment / f"version_{version}" / f"{stage}_metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_ddp_fit_then_validate_matches_a_single_process(in_tmp):
    config = tiny_config(in_tmp, name="ddp", trainer={"max_epochs": 1})
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    finlight("fit", "--config", config, *ddp, cwd=in_tmp)
    assert sorted(os.listdir(in_tmp / "logs" / "ddp")) == ["version_0"]  # rank 0 alone wrote the run folder
    assert (in_tmp / "checkpoints" / "ddp" / "version_0" / "last.ckpt").is_file()

    finlight("validate", "--config", config, "--ckpt_path", "last", cwd=in_tmp)           # version_1
    finlight("validate", "--config", config, "--ckpt_path", "last", *ddp, cwd=in_tmp)     # version_2
    single, distributed = metrics(in_tmp, "ddp", 1, "val"), metrics(in_tmp, "ddp", 2, "val")
    assert single.keys() == distributed.keys()
    for key in ("val/acc", "val/macro_f1", "val/loss"):
        # 42 validation texts split evenly over 2 ranks (no padding repeats): synced metrics are the same numbers
        assert distributed[key] == pytest.approx(single[key], abs=1e-5), key

    finlight("predict", "--config", config, "--ckpt_path", "last", *ddp, cwd=in_tmp)     # version_3
    rows = (in_tmp / "logs" / "ddp" / "version_3" / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 42  # header + every test text once, gathered from both ranks
