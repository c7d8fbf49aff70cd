"""benchmarks/compression_report.py for pruning studies: columns against a reference variant (accuracy points,
throughput ratio), the median of several timed passes, and several layer-dropping runs told apart by name."""

import csv
import json

import pytest
import torch
from conftest import write_labelled_csv


@pytest.fixture
def report(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    import compression_report

    return compression_report


def run_yaml(folder) -> str:
    write_labelled_csv(folder / "data.csv", 3)
    (folder / "run.yaml").write_text(
        "data:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n    path: data.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n    max_length: 32\n")
    return "run.yaml"


def test_reference_columns_by_hand(report):
    rows = [{"variant": "full", "status": "ok", "acc": 0.90, "samples_per_s": 100.0},
            {"variant": "cut", "status": "ok", "acc": 0.885, "samples_per_s": 190.0},
            report.not_measured("gpu_only", report.NEEDS_GPU)]
    report.add_reference_columns(rows, "full")
    assert rows[0]["acc_vs_ref_pt"] == 0.0 and rows[0]["speed_vs_ref"] == 1.0
    assert rows[1]["acc_vs_ref_pt"] == pytest.approx(-1.5) and rows[1]["speed_vs_ref"] == pytest.approx(1.9)
    assert rows[2]["acc_vs_ref_pt"] is None and rows[2]["speed_vs_ref"] is None
    assert report.columns(rows)[-2:] == report.REFERENCE_COLUMNS
    assert report.columns([{"variant": "x"}]) == report.COLUMNS  # no reference: the table is as before
    table = report.markdown_table(rows)
    assert "| acc_vs_ref_pt | speed_vs_ref |" in table.splitlines()[0]
    assert table.splitlines()[3].endswith("| -1.50 | 1.90× |")
    failed = report.add_reference_columns([{"variant": "full", "status": "failed: x"}, rows[1]], "full")
    assert failed[1]["speed_vs_ref"] is None  # the reference was not measured: no ratios


def test_reference_and_repeats_end_to_end(in_tmp, tiny_hf_dir, report):
    config = run_yaml(in_tmp)
    rows = report.main(["--config", config, "--variant", f"tiny={tiny_hf_dir}", "--int8", "tiny",
                        "--reference", "tiny", "--repeats", "3", "--out", "out", "--threads", "1",
                        "--device", "cpu", "--in_process"])
    assert [r["variant"] for r in rows] == ["tiny", "tiny+int8"] and all(r["status"] == "ok" for r in rows)
    assert rows[0]["speed_vs_ref"] == 1.0 and rows[0]["acc_vs_ref_pt"] == 0.0
    assert rows[1]["speed_vs_ref"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])
    assert rows[1]["acc_vs_ref_pt"] == pytest.approx(100 * (rows[1]["acc"] - rows[0]["acc"]))
    with open(in_tmp / "out" / "report.csv", encoding="utf-8") as handle:
        saved = list(csv.DictReader(handle))
    assert float(saved[1]["speed_vs_ref"]) == pytest.approx(rows[1]["speed_vs_ref"])
    assert json.loads((in_tmp / "out" / "results.json").read_text())[1]["speed_vs_ref"] == rows[1]["speed_vs_ref"]
    assert "speed_vs_ref" in (in_tmp / "out" / "report.md").read_text()
    assert (in_tmp / "out" / "pareto.png").stat().st_size > 5000  # size and docs/s panels
    for bad in (["--reference", "nope"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            report.main(["--config", config, "--variant", f"tiny={tiny_hf_dir}", "--in_process", *bad])


def test_several_layer_drop_runs_are_named_apart(in_tmp, report):
    def save(folder, name, layers, score):
        folder.mkdir(exist_ok=True)
        state = {f"model.bert.encoder.layer.{i}.attention.self.query.weight": torch.zeros(1) for i in range(layers)}
        callbacks = {"RunCheckpoint{'monitor': 'val/macro_f1'}": {"current_score": torch.tensor(score)}}
        torch.save({"state_dict": state, "callbacks": callbacks}, folder / name)

    for run in ("ablation", "influence"):
        save(in_tmp / run, "epoch00-a.ckpt", 3, 0.5)
        save(in_tmp / run, "epoch01-a.ckpt", 2, 0.6)
    config = run_yaml(in_tmp)
    # the fake checkpoints cannot be measured: each is listed with its error, under its name
    rows = report.main(["--config", config, "--sapling_run", f"ab={in_tmp / 'ablation'}", "--sapling_run",
                        str(in_tmp / "influence"), "--out", "out", "--in_process"])
    assert [r["variant"] for r in rows] == ["ab_3of3", "ab_2of3", "sapling_3of3", "sapling_2of3"]
    assert all(r["status"].startswith("failed: ") for r in rows)
    with pytest.raises(SystemExit):  # two unnamed runs would overwrite each other's variants
        report.main(["--config", config, "--sapling_run", str(in_tmp / "ablation"), "--sapling_run",
                     str(in_tmp / "influence"), "--out", "out", "--in_process"])
