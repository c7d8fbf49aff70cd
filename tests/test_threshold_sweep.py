"""Threshold sweep (values = sklearn, chosen on val, applied to test) and decision tiers in predict output."""

from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score

from finlight.core.callbacks.collect import SplitPredictions
from finlight.core.callbacks.threshold_sweep import (DecisionPolicy, ThresholdSweep, Tier, choose_threshold,
                                                default_grid, positive_index, sweep)
from finlight.errors import FinlightError


def _sklearn_at(y, s, t):
    p = (np.asarray(s) >= t).astype(int)
    return (precision_score(y, p, zero_division=0), recall_score(y, p, zero_division=0), f1_score(y, p, zero_division=0))


def test_sweep_values_equal_sklearn_and_lie_on_the_exact_pr_curve():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.clip(0.35 * y + rng.random(200) * 0.7, 0, 1).round(3)  # rounded: ties between scores happen
    rows = sweep(y, s, default_grid())
    assert [r["threshold"] for r in rows] == pytest.approx([0.05 * i for i in range(1, 20)])
    precision, recall, thresholds = precision_recall_curve(y, s)
    for r in rows:
        expected = _sklearn_at(y, s, r["threshold"])
        assert (r["precision"], r["recall"], r["f1"]) == pytest.approx(expected, abs=1e-12)
        assert r["tp"] + r["fn"] == y.sum() and r["predicted_positive"] == int((s >= r["threshold"]).sum())
        above = np.nonzero(thresholds >= r["threshold"])[0]
        if len(above) and r["predicted_positive"]:  # the curve point of the smallest score >= t
            assert (r["precision"], r["recall"]) == pytest.approx((precision[above[0]], recall[above[0]]), abs=1e-12)


def test_choose_threshold_rules_on_a_hand_made_sweep():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.35, 0.6, 0.3, 0.55, 0.7, 0.9]
    rows = sweep(y, s, [0.25, 0.5, 0.65, 0.8])
    # t=0.25: tp4 fp2 → P .667 R 1 F1 .8 | t=0.5: tp3 fp1 → P .75 R .75 F1 .75 | t=0.65: tp2 fp0 → P 1 R .5
    assert [round(r["f1"], 4) for r in rows] == [0.8, 0.75, 0.6667, 0.4]
    assert choose_threshold(rows, "f1") == (rows[0], True)
    assert choose_threshold(rows, "precision", 0.9) == (rows[2], True)   # best recall with P >= .9: t=.65
    assert choose_threshold(rows, "recall", 0.75) == (rows[1], True)     # best precision with R >= .75: t=.5
    chosen, met = choose_threshold(sweep(y, s, [0.25]), "precision", 0.95)
    assert not met and chosen["threshold"] == 0.25                       # unmet target → best F1, flagged
    with pytest.raises(FinlightError, match="target"):
        choose_threshold(rows, "precision", None)


def test_threshold_chosen_on_validation_is_the_one_applied_to_test():
    # validation favours 0.3, test alone would favour 0.7: the sweep must not look at test to choose
    yv = np.array([0, 0, 0, 1, 1, 1])
    sv = np.array([0.1, 0.2, 0.25, 0.35, 0.5, 0.9])
    yt = np.array([0, 0, 0, 1, 1])
    st = np.array([0.4, 0.5, 0.6, 0.75, 0.8])

    def split(y, s):
        return SplitPredictions(np.arange(len(y)), y, np.stack([1 - s, s], axis=1))

    result = ThresholdSweep(thresholds=[0.3, 0.7]).evaluate(split(yv, sv), split(yt, st), ["ok", "toxic"])
    assert result["threshold"] == 0.3 and result["rule"]["chosen_on"] == "val"
    at = result["test"]["at_threshold"]
    assert (at["precision"], at["recall"], at["f1"]) == pytest.approx(_sklearn_at(yt, st, 0.3))
    best_on_test = max(result["test"]["sweep"], key=lambda r: r["f1"])
    assert best_on_test["threshold"] == 0.7 and best_on_test["f1"] > at["f1"]
    assert result["test"]["at_0.5"]["f1"] == pytest.approx(_sklearn_at(yt, st, 0.5)[2])


def test_decision_policy_bands_and_validation():
    policy = DecisionPolicy([Tier("remove", 0.9), Tier("review", 0.5), Tier("allow", 0.0)])
    assert policy.decide([0.95, 0.9, 0.89, 0.5, 0.49, 0.0]) == ["remove", "remove", "review", "review", "allow", "allow"]
    summary = policy.summary([1, 1, 0, 1, 0, 0], [0.95, 0.9, 0.89, 0.5, 0.49, 0.0])
    assert [(t["count"], t["positive_rate"]) for t in summary] == [(2, 1.0), (2, 0.5), (2, 0.0)]
    assert policy.positive_index(["ok", "toxic"]) == 1
    for tiers, message in (([Tier("a", 0.5), Tier("b", 0.6), Tier("c", 0.0)], "strictly"),
                           ([Tier("a", 0.5), Tier("b", 0.1)], "min_score 0"),
                           ([Tier("a", 0.5), Tier("a", 0.0)], "repeat"), ([], "empty")):
        with pytest.raises(FinlightError, match=message):
            DecisionPolicy(tiers)
    with pytest.raises(FinlightError, match="positive_label"):
        positive_index(["negative", "neutral", "positive"], None, "ThresholdSweep")
    assert positive_index(["negative", "neutral", "positive"], "Negative", "x") == 0
    with pytest.raises(FinlightError, match="3 labels"):  # fails before the test loop, not after it
        ThresholdSweep().on_test_epoch_start(None, SimpleNamespace(label_names=["a", "b", "c"]))


def test_cli_test_sweeps_on_val_applies_to_test_and_predict_writes_decisions(binary_run_config):
    from finlight.cli import run_cli
    from finlight.core import ClassificationDataModule
    from finlight.deploy.export import export_hf
    from finlight.deploy.predictor import Predictor

    tiers = "[{name: remove, min_score: 0.7}, {name: review, min_score: 0.4}, {name: allow, min_score: 0.0}]"
    config = binary_run_config(
        trainer_yaml="  callbacks:\n  - class_path: finlight.core.callbacks.ThresholdSweep\n"
                     f"    init_args: {{tiers: {tiers}}}\n",
        extra_yaml=f"predictions:\n  decisions:\n    tiers: {tiers}\n")
    run_cli(["fit", "--config", config])
    cli = run_cli(["test", "--config", config, "--ckpt_path", "best"])
    folder = cli.trainer.log_dir
    result = json.load(open(os.path.join(folder, "threshold_sweep.json")))
    assert os.path.getsize(os.path.join(folder, "threshold_sweep.png")) > 10_000

    with open(os.path.join(folder, "threshold_scores.csv")) as handle:
        rows = list(csv.DictReader(handle))
    val = [(int(r["label"]), float(r["score"])) for r in rows if r["split"] == "val"]
    test = [(int(r["index"]), int(r["label"]), float(r["score"])) for r in rows if r["split"] == "test"]
    yv, sv = np.array([v[0] for v in val]), np.array([v[1] for v in val])
    f1s = [_sklearn_at(yv, sv, t)[2] for t in default_grid()]
    assert result["threshold"] == pytest.approx(default_grid()[int(np.argmax(f1s))])  # best val F1, lowest on ties
    yt, st = np.array([t[1] for t in test]), np.array([t[2] for t in test])
    at = result["test"]["at_threshold"]
    assert (at["precision"], at["recall"], at["f1"]) == pytest.approx(_sklearn_at(yt, st, result["threshold"]), abs=1e-6)
    assert [t["count"] for t in result["tiers"]["test"]] == [int((st >= 0.7).sum()), int(((st >= 0.4) & (st < 0.7)).sum()),
                                                              int((st < 0.4).sum())]

    # the test scores are the ones EvaluationReport wrote per example, and the val scores are the model's
    with open(os.path.join(folder, "test_predictions.csv")) as handle:
        written = {int(r["index"]): float(r["prob_toxic"]) for r in csv.DictReader(handle)}
    assert sorted(written) == [t[0] for t in test]
    np.testing.assert_allclose([written[i] for i, _, _ in test], st, atol=1e-5)
    export_hf(cli.trainer.ckpt_path, "exported")
    data = ClassificationDataModule(path="binary.csv", label_names=["ok", "toxic"], split_ratios=(0.5, 0.25, 0.25))
    data.setup()
    val_texts = [r.text for r in data.splits["val"]]
    np.testing.assert_allclose(Predictor.load("exported", max_length=32).predict_proba(val_texts)[:, 1], sv, atol=1e-5)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    assert {"val/pr_curve", "test/pr_curve"} <= set(events.Tags()["tensors"])
    assert "test/f1_at_threshold" in events.Tags()["scalars"]

    cli = run_cli(["predict", "--config", config, "--ckpt_path", "best"])
    with open(os.path.join(cli.trainer.log_dir, "predictions.csv")) as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == len(test)
    expected = DecisionPolicy([Tier("remove", 0.7), Tier("review", 0.4), Tier("allow", 0.0)]).decide(
        [float(r["prob_toxic"]) for r in predictions])
    assert [r["decision"] for r in predictions] == expected
