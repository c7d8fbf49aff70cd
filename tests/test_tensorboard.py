"""TensorBoard compares runs: the real `tensorboard` program serves a finished fit + test through its HTTP data
API — scalars (the test metrics beside the fit's), confusion-matrix images, PR curves and the HParams table."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from finlight.cli import run_cli
from finlight.core.callbacks.hparams import fit_log_dir, flat_hparams


def test_flat_hparams_names_sections_by_class_and_keeps_scalars():
    config = {"seed_everything": 3, "model": {"class_path": "finlight.core.SequenceClassifier",
                                              "init_args": {"learning_rate": 1e-4, "lora": {"r": 8},
                                                            "backbone": None, "label_names": ["a", "b"]}}}
    assert flat_hparams(config) == {"seed_everything": 3, "model": "SequenceClassifier",
                                    "model.learning_rate": 1e-4, "model.lora.r": 8, "model.backbone": "none",
                                    "model.label_names": "['a', 'b']"}


def test_a_checkpoint_maps_to_the_log_folder_of_its_fit(tmp_path):
    (tmp_path / "logs" / "e" / "version_3").mkdir(parents=True)
    ckpt = tmp_path / "checkpoints" / "e" / "version_3" / "best.ckpt"
    assert fit_log_dir(str(ckpt), str(tmp_path / "logs" / "e" / "version_4")) == tmp_path / "logs" / "e" / "version_3"
    assert fit_log_dir(str(ckpt), str(tmp_path / "logs" / "e" / "version_3")) is None  # that is this run
    assert fit_log_dir(str(tmp_path / "elsewhere" / "x.ckpt"), None) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_scalars_images_pr_curves_and_hparams_of_two_runs(binary_run_config):
    config = binary_run_config(trainer_yaml="  callbacks:\n  - class_path: finlight.core.callbacks.ThresholdSweep\n")
    run_cli(["fit", "--config", config])
    run_cli(["fit", "--config", config, "--model.init_args.learning_rate", "1e-3", "--seed_everything", "8"])
    test = run_cli(["test", "--config", config, "--ckpt_path", "checkpoints/tiny_binary/version_0/last.ckpt"])
    assert Path(test.trainer.log_dir).name == "version_2"

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", "logs", "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline = time.time() + 90
        while True:  # bounded wait for the server to read the event files
            try:
                tags = _get(f"{base}/scalars/tags")
                if "tiny_binary/version_0" in tags and "test/acc" in tags["tiny_binary/version_0"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.time() > deadline or server.poll() is not None:
                pytest.fail("tensorboard did not serve the runs within 90 s")
            time.sleep(1)

        fit0 = tags["tiny_binary/version_0"]
        assert {"train/loss", "val/macro_f1", "val/macro_f1_best", "test/acc", "test/macro_f1"} <= set(fit0)
        points = _get(f"{base}/scalars/scalars?run=tiny_binary/version_0&tag=test/acc")
        own = json.loads((Path(test.trainer.log_dir) / "test_metrics.json").read_text())["metrics"]["test/acc"]
        assert len(points) == 1 and points[0][2] == pytest.approx(own, abs=1e-6)  # the test run's own number

        images = _get(f"{base}/images/tags")
        assert any("confusion" in tag for tag in images["tiny_binary/version_2"])
        pr = _get(f"{base}/pr_curves/tags")
        assert any("pr_curve" in tag for tag in pr["tiny_binary/version_2"])

        experiment = _get(f"{base}/hparams/experiment", {"experimentName": ""})
        hparam_names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model.learning_rate", "seed_everything", "trainer.max_epochs", "model"} <= hparam_names
        metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"val/macro_f1_best", "test/acc"} <= metric_tags
        groups = _get(f"{base}/hparams/session_groups",
                      {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                       "colParams": [{"hparam": "model.learning_rate"}, {"hparam": "seed_everything"},
                                     {"metric": {"tag": "val/macro_f1_best"}}, {"metric": {"tag": "test/acc"}}],
                       "startIndex": 0, "sliceSize": 10})
        rows = {g["sessions"][0]["name"]: g for g in groups["sessionGroups"]}
        assert set(rows) == {"tiny_binary/version_0", "tiny_binary/version_1"}  # fits only; tests are not sessions
        lr = {name: g["hparams"]["model.learning_rate"] for name, g in rows.items()}
        assert lr == {"tiny_binary/version_0": pytest.approx(3e-3), "tiny_binary/version_1": pytest.approx(1e-3)}
        metrics0 = {m["name"]["tag"]: m["value"] for m in rows["tiny_binary/version_0"]["metricValues"]}
        assert metrics0["test/acc"] == pytest.approx(own, abs=1e-6)
        assert 0.0 <= metrics0["val/macro_f1_best"] <= 1.0
    finally:
        server.terminate()
        server.wait(timeout=20)
