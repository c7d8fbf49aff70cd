"""Dynamic INT8 and the compression report (tiny BERT, data written by the test)."""

import csv
import json

import pytest
import torch
from conftest import write_labelled_csv

from finlight.quantize.dynamic_int8 import count_linear, dynamic_int8, saved_size_bytes


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=60, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        max_position_embeddings=32, num_labels=3)).eval()


def test_dynamic_int8_quantizes_every_linear_and_keeps_the_source():
    model = tiny_bert()
    linears = count_linear(model, quantized=False)
    quantized = dynamic_int8(model)
    assert linears == 2 * 6 + 2 and count_linear(quantized, quantized=True) == linears  # 6 per layer + pooler + head
    assert count_linear(quantized, quantized=False) == 0 and count_linear(model, quantized=False) == linears
    ids = torch.randint(1, 60, (4, 12))
    with torch.no_grad():
        full, int8 = model(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert (full - int8).abs().max() < 0.05 and not torch.equal(full, int8)
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    # INT8 weights: a quarter of the float32 linear weights, plus scales and packing overhead
    saved = saved_size_bytes(model) - saved_size_bytes(quantized)
    assert 0.6 * linear_bytes < saved < 0.75 * linear_bytes


def test_pareto_front_by_hand(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import pareto_front

    points = [(10.0, 0.80), (5.0, 0.78), (5.0, 0.70), (2.0, 0.60), (8.0, 0.79), (12.0, 0.80)]
    # (5, .70) loses to (5, .78); (12, .80) to (10, .80); the rest trade size for accuracy
    assert pareto_front(points) == [3, 1, 4, 0]


def test_report_end_to_end(in_tmp, tiny_hf_dir, monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import main, test_split

    write_labelled_csv("data.csv", 3)
    (in_tmp / "run.yaml").write_text(
        "data:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n    path: data.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n    max_length: 32\n")
    rows = main(["--config", "run.yaml", "--variant", f"tiny={tiny_hf_dir}", "--int8", "tiny", "--bnb8", "tiny",
                 "--gpu_variant", "llama_qlora=exports/none", "--out", "report", "--threads", "1", "--device", "cpu",
                 "--in_process"])  # the script's default (a fresh process per variant) is slower
    assert [r["variant"] for r in rows] == ["tiny", "tiny+int8", "tiny+bnb8", "llama_qlora"]
    assert [r["status"] for r in rows[:3]] == ["ok"] * 3
    gpu_row = rows[3]  # listed with its reason, not silently missing
    if not torch.cuda.is_available():
        assert gpu_row["status"] == "not run here (needs GPU)" and gpu_row["acc"] is None
    bnb8 = rows[2]
    assert bnb8["params"] == rows[0]["params"] and bnb8["size_mb"] < rows[0]["size_mb"]
    assert abs(bnb8["acc"] - rows[0]["acc"]) <= 0.2
    rows = rows[:2]
    # accuracy recomputed here from the same test split
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, labels, _ = test_split("run.yaml")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    with torch.no_grad():
        predicted = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert rows[0]["acc"] == pytest.approx(sum(p == y for p, y in zip(predicted, labels)) / len(labels))
    assert rows[0]["layers"] == rows[1]["layers"] == 1 and rows[0]["params"] == rows[1]["params"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > r["samples_per_s"] and r["peak_rss_mb"] > 50
    saved = json.loads((in_tmp / "report" / "results.json").read_text())
    assert saved[:2] == rows and len(saved) == 4
    table = (in_tmp / "report" / "report.md").read_text()
    assert table.count("| tiny") == 3 and "| llama_qlora |" in table
    with open(in_tmp / "report" / "report.csv", encoding="utf-8") as handle:
        assert [r["variant"] for r in csv.DictReader(handle)] == ["tiny", "tiny+int8", "tiny+bnb8", "llama_qlora"]
    assert (in_tmp / "report" / "pareto.png").stat().st_size > 5000
    events = list((in_tmp / "report" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 5000  # figure + table + scalars
    with pytest.raises(SystemExit):
        main(["--config", "run.yaml", "--variant", f"tiny={tiny_hf_dir}", "--int8", "nope"])


def test_best_checkpoint_per_depth_of_a_layer_drop_run(tmp_path, monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import best_by_depth, checkpoint_depth_and_score

    def save(name, layers, score):
        state = {f"model.bert.encoder.layer.{i}.attention.self.query.weight": torch.zeros(1) for i in range(layers)}
        state["model.classifier.weight"] = torch.zeros(1)
        callbacks = {"RunCheckpoint{'monitor': 'val/macro_f1'}": {"current_score": torch.tensor(score)}}
        torch.save({"state_dict": state, "callbacks": callbacks}, tmp_path / name)

    save("epoch00-val_macro_f10.5000.ckpt", 3, 0.5)
    save("epoch01-val_macro_f10.6000.ckpt", 3, 0.6)
    save("epoch02-val_macro_f10.5500.ckpt", 2, 0.55)
    save("epoch03-val_macro_f10.5800.ckpt", 2, 0.58)
    save("epoch04-val_macro_f10.5700.ckpt", 1, 0.57)
    save("last.ckpt", 1, 0.99)  # never a candidate: it is not a selection
    assert checkpoint_depth_and_score(str(tmp_path / "epoch02-val_macro_f10.5500.ckpt")) == (2, pytest.approx(0.55))
    best = best_by_depth(str(tmp_path))
    assert {d: (p.split("/")[-1][:7], round(s, 2)) for d, (p, s) in best.items()} == {
        3: ("epoch01", 0.6), 2: ("epoch03", 0.58), 1: ("epoch04", 0.57)}


def test_sublayer_runs_are_grouped_by_parts_left(tmp_path, monkeypatch, request):
    """A sub-layer run keeps its layer count for several drops: its Pareto points are the attention + MLP parts
    left, read from the removals each checkpoint records."""
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import best_by_depth, checkpoint_parts, is_sublayer_run

    def save(name, removed, score):
        state = {f"model.model.layers.{i}.mlp.up_proj.weight": torch.zeros(1) for i in range(len(removed))}
        config = {"num_hidden_layers": len(removed), "removed_sublayers": removed}
        callbacks = {"RunCheckpoint{'monitor': 'val/macro_f1'}": {"current_score": torch.tensor(score)}}
        torch.save({"state_dict": state, "callbacks": callbacks, "finlight": {"backbone": {"config": config}}},
                   tmp_path / name)

    save("epoch00-a.ckpt", [[], [], []], 0.5)  # 6 parts: nothing removed yet
    save("epoch01-a.ckpt", [[], ["attention"], []], 0.6)  # 5
    save("epoch02-a.ckpt", [[], ["attention"], ["mlp"]], 0.55)  # 4
    save("epoch03-a.ckpt", [[], ["attention"], ["mlp"]], 0.58)  # 4, better
    assert checkpoint_parts(str(tmp_path / "epoch00-a.ckpt")) is None
    assert checkpoint_parts(str(tmp_path / "epoch02-a.ckpt")) == 4 and is_sublayer_run(str(tmp_path))
    best = best_by_depth(str(tmp_path), "parts")
    assert {d: p.split("/")[-1][:7] for d, (p, _) in best.items()} == {6: "epoch00", 5: "epoch01", 4: "epoch03"}
    assert set(best_by_depth(str(tmp_path))) == {3}  # by layers, every checkpoint is one depth
