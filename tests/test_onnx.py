"""ONNX export (dynamic axes, checked against torch, INT8) and the Lightning-free predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SENTENCES
from finlight.errors import FinlightError

TEXTS = [t for ts in SENTENCES.values() for t in ts]


@pytest.fixture(scope="module")
def onnx_dir(tiny_hf_dir, tmp_path_factory):
    from finlight.deploy.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    manifest = export_onnx(str(tiny_hf_dir), str(out), int8=True, first_token_last_layer=False)  # the whole graph
    return out, manifest


def _torch_logits(hf_dir, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits.numpy(), batch


def test_onnx_matches_torch_on_other_batch_and_sequence_sizes(onnx_dir, tiny_hf_dir):
    import onnxruntime as ort

    out, manifest = onnx_dir
    assert manifest["check"]["fp32"]["max_abs_diff"] < 1e-4
    assert manifest["label_names"] == ["positive", "negative", "neutral"]
    # the default for BERT: eager attention through the TorchScript exporter, fused by onnxruntime's optimizer
    assert manifest["exporter"] == "torchscript"
    assert manifest["optimized"]["Attention"] == 1 and manifest["optimized"]["EmbedLayerNormalization"] == 1
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"], ["batch", "sequence"]]
    for texts in (TEXTS[:7], TEXTS[3:4], TEXTS):  # 7 padded, 1 unpadded, 18 padded: none is the traced shape
        expected, batch = _torch_logits(tiny_hf_dir, texts)
        got = session.run(["logits"], {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})[0]
        assert got.shape == (len(texts), 3)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_int8_model_is_quantized_and_close(onnx_dir, tiny_hf_dir):
    import onnx

    out, manifest = onnx_dir
    ops = {node.op_type for node in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert ops & {"MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    check = manifest["check"]["int8"]
    assert 0 < check["max_abs_diff"] < 0.05 and check["examples"] == 18
    assert json.loads((out / "finlight_onnx.json").read_text())["files"] == {"fp32": "model.onnx",
                                                                              "int8": "model.int8.onnx"}


@pytest.mark.slow
def test_predictor_backends_agree_and_keep_input_order(onnx_dir, tiny_hf_dir):
    from finlight.deploy.predictor import Predictor

    out, _ = onnx_dir
    texts = TEXTS[::-1] + ["Short.", "A much longer sentence about the quarterly results of the company and its units."]
    torch_pred = Predictor.load(str(tiny_hf_dir), backend="torch", batch_size=4)
    onnx_pred = Predictor.load(str(out), batch_size=5)  # auto → onnx
    int8_pred = Predictor.load(str(out), backend="onnx-int8")
    assert onnx_pred.backend == "onnx"
    p_torch, p_onnx = torch_pred.predict_proba(texts), onnx_pred.predict_proba(texts)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    assert np.allclose(int8_pred.predict_proba(texts), p_torch, atol=0.02)
    # sorted batching must hand results back in input order: compare with one text at a time
    one_by_one = np.concatenate([_softmax(_torch_logits(tiny_hf_dir, [t])[0]) for t in texts])
    np.testing.assert_allclose(p_torch, one_by_one, atol=1e-5)
    results = torch_pred.predict(texts[:2])
    assert results[0]["label"] == max(results[0]["probs"], key=results[0]["probs"].get)
    assert abs(sum(results[0]["probs"].values()) - 1) < 1e-5


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
def test_export_from_finlight_checkpoint_unfused_dynamo_graph(tiny_hf_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finlight.cli import main
    from finlight.core.backbone import backbone_state

    model = AutoModelForSequenceClassification.from_pretrained(tiny_hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    ckpt = tmp_path / "run.ckpt"
    torch.save({"finlight": {"label_names": ["positive", "negative", "neutral"],
                             "backbone": backbone_state(model, tokenizer)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "onnx"
    main(["export-onnx", "--ckpt_path", str(ckpt), "--output_dir", str(out), "--no_optimize"])
    assert "max |onnx − torch|" in capsys.readouterr().out
    manifest = json.loads((out / "finlight_onnx.json").read_text())
    assert manifest["exporter"] == "dynamo" and manifest["check"]["fp32"]["max_abs_diff"] < 1e-4
    assert manifest["optimized"] is None
    from finlight.deploy.predictor import Predictor

    np.testing.assert_allclose(Predictor.load(str(out)).predict_proba(TEXTS),
                               Predictor.load(str(tiny_hf_dir), backend="torch").predict_proba(TEXTS), atol=1e-5)


def test_mistakes_are_one_line_errors(onnx_dir, tiny_hf_dir, tmp_path):
    from finlight.deploy.onnx import export_onnx
    from finlight.deploy.predictor import Predictor

    out, _ = onnx_dir
    with pytest.raises(FinlightError, match="not empty"):
        export_onnx(str(tiny_hf_dir), str(out))
    with pytest.raises(FinlightError, match="no config.json"):
        Predictor.load(str(tmp_path))
    with pytest.raises(FinlightError, match="export with --int8"):
        Predictor.load(str(tiny_hf_dir), backend="onnx-int8")
    with pytest.raises(FinlightError, match="no such checkpoint"):
        export_onnx(str(tmp_path / "missing.ckpt"), str(tmp_path / "o"))


@pytest.mark.parametrize("side", ["right", "left"])
def test_predictor_token_ids_equal_the_tokenizer_call(tiny_hf_dir, side):
    """The Rust fast path must give exactly the ids of ``tokenizer(..., truncation=True, max_length=...)``,
    including truncation (max_length 6 truncates most sentences here) on either side."""
    from transformers import AutoTokenizer

    from finlight.deploy.predictor import token_id_encoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    tokenizer.truncation_side = side
    texts = TEXTS + ["", "   ", "Ünïcödé café — 12.5 % up"]
    for max_length in (6, 512):
        expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        got = token_id_encoder(tokenizer, max_length)(texts)
        assert got == expected
        assert max(map(len, got)) <= max_length
    assert any(len(ids) == 6 for ids in token_id_encoder(tokenizer, 6)(texts))


def test_int8_recipes_quantize_what_they_say_and_are_compared(onnx_dir, tiny_hf_dir, tmp_path):
    import onnx
    from transformers import AutoConfig, AutoTokenizer

    from finlight.deploy.onnx import INT8_RECIPES, compare_int8_recipes, length_sorted_feeds, quantize_int8

    out, _ = onnx_dir
    fp32 = str(out / "model.onnx")
    config, tokenizer = AutoConfig.from_pretrained(tiny_hf_dir), AutoTokenizer.from_pretrained(tiny_hf_dir)
    ops = {}
    plain = [r for r in INT8_RECIPES if not INT8_RECIPES[r].get("smooth")]
    for recipe in plain:
        path = str(tmp_path / f"{recipe}.onnx")
        quantize_int8(fp32, path, recipe, config, length_sorted_feeds(tokenizer, TEXTS, 64))
        ops[recipe] = [(n.op_type, n.name) for n in onnx.load(path).graph.node]
    kinds = {recipe: {op for op, _ in nodes} for recipe, nodes in ops.items()}
    assert "QAttention" in kinds["dynamic"]  # the fused attention's Q/K/V weights in 8 bits
    assert "Attention" in kinds["matmul"] and "QAttention" not in kinds["matmul"] and "MatMulInteger" in kinds["matmul"]
    assert "EmbedLayerNormalization" in kinds["matmul"]  # the embeddings stay fp32
    kept = [name for op, name in ops["matmul-per-channel-ffn-out-fp32"] if op == "MatMul"]
    assert len(kept) == config.num_hidden_layers  # one FFN output projection per layer left in fp32
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds["static-qdq"]
    for recipe in ("weight-only", "weight-only-int8-compute"):  # 8-bit blockwise weights, no activation quantizer
        assert "MatMulNBits" in kinds[recipe] and "DynamicQuantizeLinear" not in kinds[recipe]
    with pytest.raises(FinlightError, match="calibration"):
        quantize_int8(fp32, str(tmp_path / "x.onnx"), "static-qdq", config)
    with pytest.raises(FinlightError, match="graph of the smoothed model"):  # not silently the unsmoothed one
        quantize_int8(fp32, str(tmp_path / "x.onnx"), "smooth-dynamic-per-channel", config, presmoothed=False)

    study = compare_int8_recipes(fp32, tokenizer, TEXTS, 64, config, calibration_texts=TEXTS[:6], threads=1,
                                 repeats=1)
    assert study["texts"] == len(TEXTS) and set(study["recipes"]) == {"fp32", *INT8_RECIPES}
    assert "torch model" in study["recipes"]["smooth-dynamic-per-channel"]["skipped"]  # no model given here
    for recipe in plain:
        r = study["recipes"][recipe]
        assert 0.0 <= r["agreement"] <= 1.0 and r["agreement"] == 1 - r["disagreements"] / len(TEXTS)
        assert r["samples_per_s"] > 0 and r["size_mb"] > 0


def test_export_records_the_recipe_and_the_comparison(tiny_hf_dir, tmp_path, capsys):
    from finlight.cli import main
    from finlight.deploy.onnx import DEFAULT_INT8

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "onnx"
    main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(out), "--int8_compare", str(texts)])
    manifest = json.loads((out / "finlight_onnx.json").read_text())
    assert manifest["int8_recipe"] == DEFAULT_INT8 and (out / "model.int8.onnx").is_file()
    assert manifest["int8_options"]["recipes"]["static-qdq"] == {"skipped": "no calibration texts"}
    assert manifest["int8_options"]["recipes"][DEFAULT_INT8]["agreement"] >= 0
    assert "agreement with fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(tmp_path / "o2"), "--int8",
              "--int8_recipe", "fastest"])
    assert "choose one of" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_smooth_recipe_exports_the_smoothed_graph_and_is_compared(tiny_hf_dir, tmp_path, capsys):
    import onnx

    from finlight.cli import main

    texts, calibration = tmp_path / "texts.txt", tmp_path / "calibration.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    calibration.write_text("\n".join(reversed(TEXTS)) + "\n")
    out = tmp_path / "onnx"
    main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(out), "--int8_recipe",
          "smooth-matmul-per-channel", "--int8_compare", str(texts), "--calibration_texts", str(calibration),
          "--smooth_alpha", "0.7"])
    manifest = json.loads((out / "finlight_onnx.json").read_text())
    assert manifest["int8_recipe"] == "smooth-matmul-per-channel" and manifest["smooth_alpha"] == 0.7
    assert manifest["check"]["int8"]["argmax_agreement"] >= 0.5
    ops = [n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node]
    assert "MatMulInteger" in ops and "Mul" in ops  # quantized matmuls behind the smoothing's 1/s products
    for recipe in ("smooth-dynamic-per-channel", "smooth-matmul-per-channel"):
        r = manifest["int8_options"]["recipes"][recipe]
        assert r["smooth_alpha"] == 0.7 and 0.0 <= r["agreement"] <= 1.0 and r["samples_per_s"] > 0
    assert not [f.name for f in out.iterdir() if f.name.startswith(("tmp", "smoothed"))]  # scratch graphs are gone
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(tmp_path / "o2"), "--int8_recipe",
              "smooth-dynamic-per-channel", "--int8"])
    assert "--calibration_texts" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_predictor_torch_bf16_backend_is_close_to_fp32(tiny_hf_dir):
    from finlight.deploy.predictor import Predictor

    fp32 = Predictor.load(str(tiny_hf_dir), backend="torch").predict_proba(TEXTS)
    bf16 = Predictor.load(str(tiny_hf_dir), backend="torch-bf16")
    assert bf16.backend == "torch-bf16"
    np.testing.assert_allclose(bf16.predict_proba(TEXTS), fp32, atol=0.03)


@pytest.fixture(scope="module")
def tiny2_hf_dir(tiny_hf_dir, tmp_path_factory):
    """tiny_hf_dir's tokenizer under a 2-layer BERT: the first-token last layer leaves one fused layer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny2_bert")
    config = BertConfig.from_pretrained(tiny_hf_dir)
    config.num_hidden_layers = 2
    torch.manual_seed(3)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_hf_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("first_token", [True, False])
def test_the_last_layer_is_exported_for_cls_only_with_the_whole_layers_logits(tiny2_hf_dir, tmp_path, first_token):
    import onnx
    import onnxruntime as ort

    from finlight.deploy.onnx import export_onnx

    out = tmp_path / "onnx"
    manifest = export_onnx(str(tiny2_hf_dir), str(out), int8=True, first_token_last_layer=first_token)
    assert manifest["first_token_last_layer"] is first_token
    # the last layer's attention is not fused when it runs for one query: it stays plain MatMul / Softmax
    assert manifest["optimized"]["Attention"] == (1 if first_token else 2)
    assert ("Softmax" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}) is first_token
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for texts in (TEXTS[:7], TEXTS[3:4], TEXTS):  # the whole-layer torch model is the reference
        expected, batch = _torch_logits(tiny2_hf_dir, texts)
        got = session.run(["logits"], {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert manifest["check"]["int8"]["max_abs_diff"] < 0.1


def test_export_onnx_command_keeps_the_whole_last_layer_on_request(tiny2_hf_dir, tmp_path):
    from finlight.cli import main

    main(["export-onnx", "--model", str(tiny2_hf_dir), "--output_dir", str(tmp_path / "full"),
          "--no_first_token_last_layer"])
    manifest = json.loads((tmp_path / "full" / "finlight_onnx.json").read_text())
    assert manifest["first_token_last_layer"] is False and manifest["optimized"]["Attention"] == 2
