"""``tfidf``: TF-IDF + logistic regression as a finlight run — the neural runs' split, sklearn's metrics, the files
``report`` reads, and C chosen on validation alone."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

from conftest import PHRASEBANK_ALL, write_labelled_csv
from finlight.core.classical import TfidfSettings, fit_tfidf, split_metrics
from helpers import one_line_error

FILES = ("config.yaml", "test_metrics.json", "test_predictions.csv", "data_report.json")


def _tfidf_config(neural_config: str, path: str, seed: int = 7) -> str:
    """A tfidf config with the neural config's data section, as configs/tfidf_phrasebank.yaml mirrors finbert's."""
    data = yaml.safe_load(open(neural_config))["data"]
    with open(path, "w") as handle:
        handle.write("# python -m finlight tfidf --config " + os.path.basename(path) + "\n")
        yaml.safe_dump({"seed_everything": seed, "c_grid": [0.1, 1.0, 10.0], "data": data}, handle)
    return path


def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_tfidf_run_has_the_neural_split_sklearn_metrics_and_pairs_in_report(binary_run_config, capsys):
    from finlight.cli import main
    from finlight.report.compare import build_report

    neural_config = binary_run_config(max_epochs=1)
    main(["seeds", "--config", neural_config, "--seeds", "7"])
    main(["tfidf", "--config", _tfidf_config(neural_config, "tfidf_binary.yaml")])
    assert "finlight tfidf: C=" in capsys.readouterr().out
    neural, tfidf = os.path.join("logs", "tiny_binary", "version_0"), os.path.join("logs", "tfidf_binary", "version_0")
    for name in FILES:
        assert os.path.isfile(os.path.join(tfidf, name)), name

    # the same splits as the neural data module: sizes, and the test examples one by one in the same order
    sizes = [json.load(open(os.path.join(f, "data_report.json")))["sizes"] for f in (neural, tfidf)]
    assert sizes[0] == sizes[1] and sizes[1]["test"] > 0
    neural_rows, rows = (_rows(os.path.join(f, "test_predictions.csv")) for f in (neural, tfidf))
    assert list(rows[0]) == list(neural_rows[0])  # the same columns: index, text, label, predicted, prob_<label>…
    assert [(r["index"], r["text"], r["label"]) for r in rows] == [(r["index"], r["text"], r["label"]) for r in neural_rows]

    # test_metrics.json: the neural run's metric names, with sklearn's values computed by hand on the predictions
    report = json.load(open(os.path.join(tfidf, "test_metrics.json")))
    neural_metrics = json.load(open(os.path.join(neural, "test_metrics.json")))["metrics"]
    assert set(report["metrics"]) == set(neural_metrics)
    names = report["label_names"]
    y = [names.index(r["label"]) for r in rows]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    predicted = [names.index(r["predicted"]) for r in rows]
    assert predicted == list(probs.argmax(axis=1))
    m = report["metrics"]
    assert m["test/acc"] == pytest.approx(accuracy_score(y, predicted))
    assert m["test/macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
    assert m["test/weighted_f1"] == pytest.approx(f1_score(y, predicted, average="weighted"))
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=[0, 1], zero_division=0)
    for i, name in enumerate(names):
        assert (m[f"test/precision_{name}"], m[f"test/recall_{name}"], m[f"test/f1_{name}"]) == pytest.approx(
            (precision[i], recall[i], f1[i]))
    assert m["test/loss"] == pytest.approx(log_loss(y, probs, labels=[0, 1]), abs=1e-4)  # probs rounded to 1e-6
    assert report["selected"]["C"] in (0.1, 1.0, 10.0) and len(report["selected"]["grid"]) == 3
    config = yaml.safe_load(open(os.path.join(tfidf, "config.yaml")))
    assert config["seed_everything"] == 7 and config["experiment"] == "tfidf_binary"

    # report reads it beside the neural run and pairs the two on the same test set, seed for seed
    result = build_report([neural, tfidf], "out", baseline="tiny_binary", resamples=200)
    assert {g["group"] for g in result["groups"]} == {"tiny_binary", "tfidf_binary"}
    (pair,) = result["pairs"]
    assert pair["run"] == tfidf and pair["seed_matched"] and pair["n"] == sizes[1]["test"]
    assert pair["acc_run"] == pytest.approx(m["test/acc"])
    assert not any("different test sets" in n or "mixes" in n for n in result["notes"]), result["notes"]
    tfidf_row = next(r for r in result["runs"] if r["group"] == "tfidf_binary")
    assert tfidf_row["selected"].startswith("C=") and tfidf_row["best_val_macro_f1"] == pytest.approx(
        report["selected"]["value"])  # the chosen C's validation score, from the run's TensorBoard events


def _splits(tmp_path):
    from finlight.core import ClassificationDataModule

    datamodule = ClassificationDataModule(path=write_labelled_csv(tmp_path / "rows.csv", repeat=4),
                                          label_names=["negative", "neutral", "positive"], split_ratios=(0.6, 0.2, 0.2))
    datamodule.setup("fit")
    return {s: ([r.text for r in datamodule.splits[s]], list(datamodule.labels[s])) for s in ("train", "val", "test")}


def test_c_is_chosen_on_validation_and_test_labels_never_reach_the_choice(tmp_path):
    names = ["negative", "neutral", "positive"]
    split = _splits(tmp_path)
    settings = TfidfSettings(c_grid=(100.0, 0.01, 1.0, 0.1, 10.0))  # any order: tried in ascending C
    clean = fit_tfidf(split["train"], split["val"], split["test"], names, settings)
    assert [g["C"] for g in clean.grid] == [0.01, 0.1, 1.0, 10.0, 100.0]
    best = max(g["val/macro_f1"] for g in clean.grid)
    assert clean.C == min(g["C"] for g in clean.grid if g["val/macro_f1"] == best)  # ties: the smaller C
    assert clean.val["val/macro_f1"] == best

    texts, labels = split["test"]
    poisoned_labels = [(y + 1) % 3 for y in labels]  # every test label wrong …
    poisoned_texts = ["zzz qqq " + t[::-1] for t in texts]  # … and the texts scrambled
    poisoned = fit_tfidf(split["train"], split["val"], (poisoned_texts, poisoned_labels), names, settings)
    assert poisoned.C == clean.C and poisoned.grid == clean.grid and poisoned.vocabulary_size == clean.vocabulary_size
    relabelled = fit_tfidf(split["train"], split["val"], (texts, poisoned_labels), names, settings)
    assert relabelled.C == clean.C and relabelled.grid == clean.grid
    assert relabelled.test["test/acc"] != clean.test["test/acc"]  # the poison is seen where it belongs: the test score

    val_texts, val_labels = split["val"]  # and the validation labels are what the choice reads
    shifted = fit_tfidf(split["train"], (val_texts, [(y + 1) % 3 for y in val_labels]), split["test"], names, settings)
    assert [g["val/macro_f1"] for g in shifted.grid] != [g["val/macro_f1"] for g in clean.grid]
    assert shifted.test_probs.shape == clean.test_probs.shape


def test_split_metrics_loss_is_the_neural_class_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(40, 3)))
    labels = torch.tensor(rng.integers(0, 3, 40))
    probs = logits.softmax(-1).numpy()
    weights = [0.5, 1.0, 3.0]
    names = ["a", "b", "c"]
    weighted = split_metrics(labels.tolist(), probs, names, "test", weights)
    assert weighted["test/loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights, dtype=logits.dtype))))
    plain = split_metrics(labels.tolist(), probs, names, "val")
    assert plain["val/loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    assert plain["val/macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))


def test_tfidf_command_seed_option_default_name_and_one_line_errors(in_tmp, capsys):
    from finlight.cli import main

    write_labelled_csv(in_tmp / "rows.csv", repeat=3)
    config = in_tmp / "tfidf_rows.yaml"
    config.write_text("c_grid: [1.0]\ndata:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n"
                      "    path: rows.csv\n    split_ratios: [0.6, 0.2, 0.2]\n")
    main(["tfidf", "--config", str(config), "--seed", "5", "--no_write_png"])
    folder = os.path.join("logs", "tfidf_rows", "version_0")
    assert yaml.safe_load(open(os.path.join(folder, "config.yaml")))["seed_everything"] == 5
    assert not os.path.exists(os.path.join(folder, "test_confusion_raw.png"))
    assert "c_grid" in one_line_error(capsys, ["tfidf", "--config", str(config), "--c_grid", "0"])
    assert "max_length" in one_line_error(capsys, ["tfidf", "--config", str(config),
                                                   "--data.init_args.max_length", "x"])
    no_val = in_tmp / "no_val.yaml"
    no_val.write_text(config.read_text().replace("[0.6, 0.2, 0.2]", "[0.8, 0.0, 0.2]"))
    assert "validation split is empty" in one_line_error(capsys, ["tfidf", "--config", str(no_val)])


@pytest.mark.integration
def test_tfidf_on_phrasebank_allagree_uses_the_80_10_10_split(in_tmp):
    from finlight.core.classical import tfidf_command

    data = {"class_path": "finlight.core.ClassificationDataModule",
            "init_args": {"path": str(PHRASEBANK_ALL), "label_names": ["negative", "neutral", "positive"],
                          "split_ratios": [0.8, 0.1, 0.1], "seed": 42}}
    folder = tfidf_command(data, experiment="tfidf_phrasebank", write_png=False)
    assert json.load(open(os.path.join(folder, "data_report.json")))["sizes"] == {"train": 1811, "val": 226, "test": 226}
    report = json.load(open(os.path.join(folder, "test_metrics.json")))
    assert report["metrics"]["test/acc"] > 0.85 and report["selected"]["value"] > 0.8
