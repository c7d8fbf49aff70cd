"""Dynamic INT8 and the compression report (tiny BERT, data written by the test)."""

import csv
import json

import pytest
import torch
from conftest import labelled_rows

from finlight.quantize import count_linear, dynamic_int8, saved_size_bytes


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

    with open("data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(labelled_rows(3))
    (in_tmp / "run.yaml").write_text(
        "data:\n  class_path: finlight.data.ClassificationDataModule\n  init_args:\n    path: data.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n    max_length: 32\n")
    rows = main(["--config", "run.yaml", "--variant", f"tiny={tiny_hf_dir}", "--int8", "tiny", "--out", "report",
                 "--threads", "1", "--in_process"])  # the script's default (a fresh process per variant) is slower
    assert [r["variant"] for r in rows] == ["tiny", "tiny+int8"]
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
    assert saved == rows
    assert (in_tmp / "report" / "report.md").read_text().count("| tiny") == 2
    assert (in_tmp / "report" / "pareto.png").stat().st_size > 5000
    with pytest.raises(SystemExit):
        main(["--config", "run.yaml", "--variant", f"tiny={tiny_hf_dir}", "--int8", "nope"])
