"""``report``: statistics against hand computations, aggregation of hand-made runs, and ``seeds`` end to end."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from finlight.errors import FinlightError
from finlight.report.compare import build_report, macro_f1, mcnemar_test, mean_std, paired_bootstrap
from helpers import RUN_TRUTH as TRUTH, write_run


def _pairs(both_right: int, only_a: int, only_b: int, both_wrong: int):
    """Labels all 0; A / B predict 0 (right) or 1 (wrong) in the four agreement cells."""
    a = [0] * both_right + [0] * only_a + [1] * only_b + [1] * both_wrong
    b = [0] * both_right + [1] * only_a + [0] * only_b + [1] * both_wrong
    return [0] * len(a), a, b


def test_mcnemar_matches_hand_computation():
    # exact: b=2, c=8 → two-sided binomial(10, 1/2): 2 · (C(10,0)+C(10,1)+C(10,2)) / 2^10 = 112/1024
    result = mcnemar_test(*_pairs(10, 2, 8, 5))
    assert (result["b"], result["c"], result["exact"]) == (2, 8, True)
    assert result["pvalue"] == pytest.approx(112 / 1024)
    # chi² with continuity correction: b=10, c=30 → (|10−30|−1)² / 40 = 9.025; p = erfc(√(9.025/2)) for 1 dof
    result = mcnemar_test(*_pairs(50, 10, 30, 5))
    assert not result["exact"] and result["statistic"] == pytest.approx(9.025)
    assert result["pvalue"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert mcnemar_test(*_pairs(5, 0, 0, 3))["pvalue"] == 1.0


def test_macro_f1_equals_sklearn_even_with_an_absent_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 3, 60))
    p[p == 2] = 1  # class 2 never predicted
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))  # class 3 absent everywhere


def test_paired_bootstrap_null_strong_difference_and_reproducibility():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    noisy = np.where(rng.random(300) < 0.5, y, (y + 1) % 3)
    same = paired_bootstrap(y, noisy, noisy, 3, n_resamples=500)
    assert same["delta"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["pvalue"] == 1.0
    better = paired_bootstrap(y, noisy, y, 3, n_resamples=500, seed=4)
    assert better["delta"] == pytest.approx(1 - f1_score(y, noisy, average="macro"))
    assert 0 < better["ci_low"] < better["delta"] < better["ci_high"] and better["pvalue"] == pytest.approx(2 / 501)
    slight = noisy.copy()  # fixes 8 of A's errors and breaks 5 of its right answers: net +3 of 300
    wrong, right = np.nonzero(noisy != y)[0], np.nonzero(noisy == y)[0]
    slight[wrong[:8]] = y[wrong[:8]]
    slight[right[:5]] = (y[right[:5]] + 2) % 3
    first = paired_bootstrap(y, noisy, slight, 3, n_resamples=500, seed=4)
    assert first == paired_bootstrap(y, noisy, slight, 3, n_resamples=500, seed=4)
    assert first["ci_low"] < 0 < first["ci_high"] and first["pvalue"] > 0.05  # a 1-2 point gap on 300: not real


def test_mean_std_uses_sample_std():
    mean, std = mean_std([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.02)
    assert mean_std([0.5]) == (0.5, None)


# ---------------------------------------------------------------------------------------------- hand-made runs
def test_report_aggregates_hand_made_runs(in_tmp):
    # baseline: fit and test in one folder (the seeds layout); seeds 1, 2, 3
    base_f1 = [0.70, 0.74, 0.78]
    base_pred = [0, 1, 2, 0, 1, 2, 1, 2, 0, 0]  # 6 right
    for i, (seed, f1) in enumerate(zip((1, 2, 3), base_f1)):
        write_run(f"logs/base/version_{i}", seed, {"test/acc": 0.6, "test/macro_f1": f1}, base_pred,
                   curve=[0.3, 0.5 + i / 100, 0.45])
    # candidate: fit folders (config, curves) and separate test folders that name their checkpoints
    cand_pred = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # 9 right; vs base: only_a 0, only_b 3
    for i, (seed, f1) in enumerate(zip((1, 2), (0.80, 0.90))):
        write_run(f"logs/cand/version_{i}", seed, curve=[0.6, 0.7 + i / 10])
        write_run(f"logs/cand/version_{i + 2}", None, {"test/acc": 0.9, "test/macro_f1": f1}, cand_pred,
                   checkpoint=f"checkpoints/cand/version_{i}/epoch01.ckpt")
    result = build_report(["logs"], "out", baseline="base", resamples=200)

    groups = {g["group"]: g for g in result["groups"]}
    assert groups["base"]["runs"] == 3 and groups["base"]["seeds"] == "1 2 3"
    assert groups["base"]["test/macro_f1_mean"] == pytest.approx(0.74)
    assert groups["base"]["test/macro_f1_std"] == pytest.approx(0.04)
    assert groups["cand"]["test/macro_f1_mean"] == pytest.approx(0.85)
    assert groups["cand"]["test/macro_f1_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert groups["cand"]["test/macro_f1_delta_vs_baseline"] == pytest.approx(0.11)
    runs = {r["run"]: r for r in result["runs"]}
    assert runs[os.path.join("logs", "cand", "version_3")]["seed"] == 2            # seed found through the checkpoint
    assert runs[os.path.join("logs", "cand", "version_3")]["best_val_macro_f1"] == pytest.approx(0.8)  # curves too
    assert runs[os.path.join("logs", "base", "version_2")]["best_val_macro_f1"] == pytest.approx(0.52)

    assert len(result["pairs"]) == 2
    for pair in result["pairs"]:
        assert pair["seed_matched"] and pair["n"] == 10
        assert (pair["mcnemar_b"], pair["mcnemar_c"]) == (0, 3)
        assert pair["mcnemar_p"] == pytest.approx(2 / 8)  # exact: 2 · (1/2)^3
        assert pair["ci_low"] > 0 and pair["bootstrap_p"] < 0.05  # the interval and the p-value agree
        assert pair["delta_macro_f1"] == pytest.approx(f1_score(TRUTH, cand_pred, average="macro")
                                                       - f1_score(TRUTH, base_pred, average="macro"))
    assert runs[os.path.join("logs", "cand", "version_2")]["mcnemar_p"] == pytest.approx(0.25)
    assert result["notes"] == []
    for name in ("report.md", "runs.csv", "groups.csv", "paired.csv", "val_curves.png"):
        assert os.path.getsize(os.path.join("out", name)) > 0
    assert "0.7400 ± 0.0400" in result["markdown"] and "0 of 2 paired comparisons significant" in result["markdown"]
    with open("out/runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 5


def test_report_notes_mixed_configs_and_different_test_sets(in_tmp):
    write_run("logs/base/version_0", 1, {"test/macro_f1": 0.7}, [0] * 10, lr=1e-3)
    write_run("logs/base/version_1", 2, {"test/macro_f1": 0.7}, [0] * 10, lr=5e-4)
    write_run("logs/other/version_0", 1, {"test/macro_f1": 0.7}, [0] * 10, truth=[1] + TRUTH[1:])
    result = build_report(["logs/base", "logs/other"], "out", resamples=200)
    assert result["baseline"] == "base" and result["pairs"] == []
    assert any("mixes configurations" in n and "model.init_args.learning_rate" in n for n in result["notes"])
    assert any("different test sets" in n for n in result["notes"])


def test_report_counts_a_varied_batch_order_as_a_seed_not_a_configuration(in_tmp):
    for version, seed in ((0, 1), (1, 2)):
        folder = f"logs/base/version_{version}"
        write_run(folder, seed, {"test/macro_f1": 0.7}, [0] * 10)
        config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
        config["data"] = {"init_args": {"order_seed": 41 + seed, "batch_size": 8}}
        yaml.safe_dump(config, open(os.path.join(folder, "config.yaml"), "w"))
    assert build_report(["logs/base"], "out", resamples=200)["notes"] == []
    config["data"]["init_args"]["batch_size"] = 16  # a real difference is still named
    yaml.safe_dump(config, open(os.path.join(folder, "config.yaml"), "w"))
    (note,) = build_report(["logs/base"], "out", resamples=200)["notes"]
    assert "data.init_args.batch_size" in note and "order_seed" not in note


def test_retests_of_one_checkpoint_count_once(in_tmp):
    write_run("logs/a/version_0", 1, curve=[0.5])
    ckpt = "checkpoints/a/version_0/epoch00.ckpt"
    write_run("logs/a/version_1", None, {"test/macro_f1": 0.6}, [0] * 10, checkpoint=ckpt)
    with open("logs/a/version_1/latency.json", "w") as handle:
        json.dump({"parameters": 1234, "disk_size_mb": 0.5, "batches": {"1": {"ms_mean": 2.0, "samples_per_s": 500}}}, handle)
    selected = {"how": "best", "path": ckpt, "monitor": "val/macro_f1", "mode": "max", "value": 0.5, "layers": 2}
    report = json.load(open("logs/a/version_1/test_metrics.json"))
    with open("logs/a/version_1/test_metrics.json", "w") as handle:  # `seeds` recorded the choice on this test
        json.dump({**report, "selected": selected}, handle)
    write_run("logs/a/version_10", None, {"test/macro_f1": 0.6}, [0] * 10, checkpoint=ckpt)
    write_run("logs/a/version_2", 2, {"test/macro_f1": 0.8}, [0] * 10)
    result = build_report(["logs"], "out", resamples=200)
    assert [r["run"] for r in result["runs"]] == [os.path.join("logs", "a", "version_2"),
                                                  os.path.join("logs", "a", "version_10")]  # natural order: 2 < 10
    (group,) = result["groups"]
    assert group["runs"] == 2 and group["test/macro_f1_mean"] == pytest.approx(0.7)
    assert result["runs"][1]["parameters"] == 1234 and result["runs"][1]["seed"] == 1
    from finlight.prune.checkpoint_selection import describe_selection

    assert result["runs"][1]["selected"] == describe_selection(selected) and "best" in result["runs"][1]["selected"]
    assert any("count once" in n for n in result["notes"])


def test_a_test_logged_under_a_new_experiment_is_its_own_row_with_the_fits_seed(in_tmp):
    # a pruned fit tested at its final depth, then its 18-layer checkpoint tested under a new experiment name
    write_run("logs/prune/version_0", 3, {"test/macro_f1": 0.3}, [0] * 10, curve=[0.7, 0.6])
    write_run("logs/prune_18/version_0", None, {"test/macro_f1": 0.6}, [0] * 10,
              checkpoint="checkpoints/prune/version_0/epoch04.ckpt")
    result = build_report(["logs"], "out", resamples=200)
    groups = {g["group"]: g for g in result["groups"]}
    assert sorted(groups) == ["prune", "prune_18"] and groups["prune_18"]["runs"] == 1
    assert groups["prune_18"]["test/macro_f1_mean"] == pytest.approx(0.6)
    row = next(r for r in result["runs"] if r["group"] == "prune_18")
    assert row["seed"] == 3  # read from the fit's config, which the checkpoint path leads to


def test_report_command_errors_are_one_line(in_tmp, capsys):
    from finlight.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["report", "logs"])
    assert exit_info.value.code == 2 and "no such run folder" in capsys.readouterr().err
    os.makedirs("logs/empty")
    with pytest.raises(SystemExit):
        main(["report", "logs"])
    assert "no tested runs" in capsys.readouterr().err
    write_run("logs/a/version_0", 1, {"test/macro_f1": 0.7}, [0] * 10)
    with pytest.raises(FinlightError, match="--baseline 'zzz'"):
        build_report(["logs"], "out", baseline="zzz", resamples=200)
    write_run("logs/b/version_0", 1, {"test/macro_f1": 0.7}, [0] * 10)
    with pytest.raises(FinlightError, match="--baseline 'zzz'"):
        build_report(["logs"], "out", baseline="zzz", resamples=200)


@pytest.mark.slow
def test_seeds_command_runs_each_seed_and_same_seed_gives_same_result(binary_run_config, capsys):
    from finlight.cli import main

    config = binary_run_config(max_epochs=1)
    main(["seeds", "--config", config, "--seeds", "5", "5", "6", "--data.init_args.batch_size", "12"])
    out = capsys.readouterr().out
    assert "finlight seeds: tiny_binary, seeds [5, 5, 6]" in out
    folders = [os.path.join("logs", "tiny_binary", f"version_{i}") for i in range(3)]
    seeds = [yaml.safe_load(open(os.path.join(f, "config.yaml")))["seed_everything"] for f in folders]
    assert seeds == [5, 5, 6]
    assert all(yaml.safe_load(open(os.path.join(f, "config.yaml")))["data"]["init_args"]["batch_size"] == 12
               for f in folders)
    predictions = [open(os.path.join(f, "test_predictions.csv")).read() for f in folders]
    assert predictions[0] == predictions[1] != predictions[2]
    metrics = [json.load(open(os.path.join(f, "test_metrics.json")))["metrics"] for f in folders]
    assert metrics[0] == metrics[1]
    with open(os.path.join("reports", "tiny_binary_seeds", "groups.csv")) as handle:
        (group,) = list(csv.DictReader(handle))
    assert group["runs"] == "3"
    assert float(group["test/macro_f1_mean"]) == pytest.approx(np.mean([m["test/macro_f1"] for m in metrics]))
    with pytest.raises(SystemExit):
        main(["seeds", "--config", config, "--seeds", "1", "--seed_everything", "3"])
    assert "--seeds, not --seed_everything" in capsys.readouterr().err


def test_seeds_vary_order_seeds_the_batch_order_not_the_split(binary_run_config, capsys):
    from finlight.cli import main

    config = binary_run_config(max_epochs=1)
    main(["seeds", "--config", config, "--seeds", "5", "6", "--vary_order", "--trainer.limit_train_batches",
          "2", "--trainer.limit_val_batches", "1"])
    capsys.readouterr()
    folders = [os.path.join("logs", "tiny_binary", f"version_{i}") for i in range(2)]
    data = [yaml.safe_load(open(os.path.join(f, "config.yaml")))["data"]["init_args"] for f in folders]
    assert [d["order_seed"] for d in data] == [5, 6] and data[0]["seed"] == data[1]["seed"]
    with pytest.raises(SystemExit):
        main(["seeds", "--config", config, "--seeds", "1", "--vary_order", "--data.init_args.order_seed", "3"])
    assert "--vary_order sets data.order_seed" in capsys.readouterr().err
