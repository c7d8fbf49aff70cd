"""What reports/toxicity_dendrites needs beyond the existing parts: ROC AUC in the threshold sweep, the sweep's
operating point as `finlight report` metrics, the dendrite sets of a tested checkpoint, and the speed benchmark's
batching and quality figures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from finlight.core.callbacks.collect import SplitPredictions
from finlight.core.callbacks.threshold_sweep import ThresholdSweep, pr_curve
from finlight.errors import FinlightError
from finlight.report.compare import build_report
from helpers import write_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _split(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    return SplitPredictions(np.arange(len(y)), y, np.stack([1 - s, s], axis=1))


def test_pr_curve_has_the_roc_auc_of_sklearn_and_none_without_both_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.clip(0.3 * y + rng.random(200) * 0.8, 0, 1)
    curve = pr_curve(y, s)
    assert curve["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert curve["average_precision"] == pytest.approx(average_precision_score(y, s))
    assert 0.5 < curve["roc_auc"] < 1.0
    assert pr_curve([0, 0, 0], [0.1, 0.4, 0.9])["roc_auc"] is None  # undefined: no positive


def _sweep_for(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    yv, yt = rng.integers(0, 2, 40), rng.integers(0, 2, 50)
    sv, st = (np.clip(0.35 * y + rng.random(len(y)) * 0.65, 0, 1) for y in (yv, yt))
    return ThresholdSweep().evaluate(_split(yv, sv), _split(yt, st), ["non_toxic", "toxic"])


def test_report_offers_the_sweep_operating_point_as_metrics(in_tmp):
    truth = [0, 1, 0, 1, 0, 1, 0, 0, 1, 0]
    sweeps = {}
    for i, seed in enumerate((1, 2, 3)):
        folder = f"logs/tiny/version_{i}"
        write_run(folder, seed, {"test/acc": 0.8, "test/macro_f1": 0.7, "test/f1_toxic": 0.5 + i / 10},
                  predicted=truth, curve=[0.5, 0.6], truth=truth)
        sweeps[seed] = _sweep_for(seed)
        with open(os.path.join(folder, "threshold_sweep.json"), "w") as handle:
            json.dump(sweeps[seed], handle)
    metrics = ["test/f1_toxic", "test/f1_at_threshold", "test/precision_at_threshold", "test/auroc", "val/threshold"]
    result = build_report(["logs"], "out", metrics=metrics, resamples=100)
    group = result["groups"][0]
    assert group["test/f1_toxic_mean"] == pytest.approx(0.6)  # the test's own metric is kept
    for metric, pick in (("test/f1_at_threshold", lambda r: r["test"]["at_threshold"]["f1"]),
                         ("test/precision_at_threshold", lambda r: r["test"]["at_threshold"]["precision"]),
                         ("test/auroc", lambda r: r["test"]["pr_curve"]["roc_auc"]),
                         ("val/threshold", lambda r: r["threshold"])):
        values = [pick(sweeps[s]) for s in (1, 2, 3)]
        assert group[f"{metric}_mean"] == pytest.approx(np.mean(values)), metric
        assert group[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1)), metric
    assert "f1_at_threshold" in result["markdown"] and "auroc" in result["markdown"]
    assert os.path.getsize("out/pr_curves.png") > 10_000

    with open("logs/tiny/version_0/threshold_sweep.json", "w") as handle:
        json.dump({"threshold": 0.5}, handle)  # truncated / foreign file
    with pytest.raises(FinlightError, match="threshold_sweep.json: not a finlight threshold sweep"):
        build_report(["logs"], "out", metrics=metrics, resamples=100)


def test_dendrite_sets_are_read_from_the_weights():
    from finlight.dendrites.perforate import dendrite_sets

    layer = "bert.encoder.layer.0.attention.self.query"  # key names as perforatedai 3.2.9 writes them
    weights = {f"{layer}.main_module.weight": 0, f"{layer}.dendrite_module.dendrite_values.0.shape": 0,
               f"{layer}.dendrite_module.parent_module.weight": 0}
    assert dendrite_sets(weights) == 0
    weights.update({f"{layer}.dendrite_module.layers.0.weight": 0, f"{layer}.dendrite_module.layers.0.bias": 0,
                    f"{layer}.dendrite_module.layers.1.weight": 0,
                    f"{layer.replace('query', 'key')}.dendrite_module.layers.1.weight": 0})
    assert dendrite_sets(weights) == 2


@pytest.mark.slow
def test_a_tested_dendritic_checkpoint_reports_its_own_dendrite_sets(in_tmp):
    pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")
    from helpers import dendritic_config

    from finlight.cli import run_cli

    config = dendritic_config(in_tmp)
    fit = run_cli(["fit", "--config", config])  # smoke mode: switches after epochs 0, 1, 2 → 3 sets
    counts = {}
    for which in ("best", "last"):
        cli = run_cli(["test", "--config", config, "--ckpt_path", which])
        with open(os.path.join(cli.trainer.log_dir, "test_metrics.json")) as handle:
            counts[which] = json.load(handle)["metrics"]["test/dendrite_sets"]
    best_epoch = int(Path(fit.trainer.checkpoint_callback.best_model_path).name[5:7])
    # a checkpoint is written after its epoch's validation, before that epoch's switch: epoch e holds min(e, 3) sets
    assert counts == {"best": float(min(best_epoch, 3)), "last": 3.0}


def test_speed_benchmark_batches_are_longest_first_and_padded_to_their_own_longest():
    from speed_compare import batches, quality

    class Tokenizer:
        pad_token_id = 0

        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [[7] * min(len(t.split()), max_length) for t in texts]}

    texts = ["a b", "a b c d e", "a", "a b c", "a b c d e f g h"]
    out = batches(Tokenizer(), texts, 2, max_length=6)
    assert [chunk for chunk, _, _ in out] == [[4, 1], [3, 0], [2]]
    assert [x.shape for _, x, _ in out] == [(2, 6), (2, 3), (1, 1)]
    chunk, x, mask = out[1]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]] and x.tolist() == [[7, 7, 7], [7, 7, 0]]

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    p1 = np.clip(0.4 * labels + 0.6 * rng.random(60), 0, 1)
    q = quality(np.stack([1 - p1, p1], 1), labels, positive=1)
    predicted = (p1 > 0.5).astype(int)
    assert q["f1"] == pytest.approx(f1_score(labels, predicted))
    assert q["precision"] == pytest.approx(precision_score(labels, predicted))
    assert q["recall"] == pytest.approx(recall_score(labels, predicted))
    assert q["auroc"] == pytest.approx(roc_auc_score(labels, p1))
