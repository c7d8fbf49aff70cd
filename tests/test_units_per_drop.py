"""SuccessiveLayerDrop.units_per_drop (several units per drop, never past the target), cached_label_scores (the
constrained scoring function compression_report shares with CausalLMClassifier) and the compression report's
label-word classifier rows."""

import importlib.util
import json

import pytest
import torch

from finlight.errors import FinlightError
from finlight.prune import surgery
from finlight.prune.layer_drop import SuccessiveLayerDrop


def llama(layers: int = 4, hidden: int = 32):
    """A tiny Llama; ``hidden=64`` gives every projection an output width divisible by 32 (gptqmodel's CPU packing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256)).eval()


def test_several_layers_per_drop_stop_at_the_target():
    model = llama(4)
    originals = list(surgery.layer_list(model))
    drop = SuccessiveLayerDrop(target_layers=2, units_per_drop=3, method="block_influence")
    gone = drop._drop_ranked(model, [("layer", 3), ("layer", 0), ("layer", 1), ("layer", 2)], 3)
    assert gone == [("layer", 3), ("layer", 0)]  # the third would pass the target of 2 layers
    assert list(surgery.layer_list(model)) == [originals[1], originals[2]]
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in surgery.layer_list(model)] == [0, 1]


def test_sublayers_are_named_in_the_numbering_before_the_drop():
    model = llama(3)
    originals = list(surgery.layer_list(model))
    drop = SuccessiveLayerDrop(granularity="sublayer", target_sublayers=1, units_per_drop=3)
    # attention 0 then MLP 0 empties layer 0; "mlp 2" must then still mean the original layer 2's MLP
    gone = drop._drop_ranked(model, [("attention", 0), ("mlp", 0), ("mlp", 2), ("attention", 1)], 3)
    assert gone == [("attention", 0), ("mlp", 0), ("mlp", 2)]
    layers = list(surgery.layer_list(model))
    assert layers == [originals[1], originals[2]]
    assert surgery.units(model, "sublayer") == [("attention", 0), ("mlp", 0), ("attention", 1)]
    assert surgery.count_sublayers(model) == 3


def test_sublayer_drops_stop_at_the_parameter_ratio():
    model = llama(2)
    initial = surgery.parameter_count(model)
    mlp = sum(p.numel() for p in surgery.layer_list(model)[0].mlp.parameters())
    ratio = 1 - 1.5 * mlp / initial  # one MLP is not enough, two are
    drop = SuccessiveLayerDrop(granularity="sublayer", target_param_ratio=ratio, units_per_drop=4)
    drop.initial_params = initial
    gone = drop._drop_ranked(model, [("mlp", 0), ("mlp", 1), ("attention", 0), ("attention", 1)], 4)
    assert gone == [("mlp", 0), ("mlp", 1)]
    assert surgery.parameter_count(model) / initial <= ratio < (initial - mlp) / initial


def test_bad_units_per_drop_are_refused():
    with pytest.raises(FinlightError, match="units_per_drop=0"):
        SuccessiveLayerDrop(target_layers=2, units_per_drop=0)
    with pytest.raises(FinlightError, match="angular_n"):
        SuccessiveLayerDrop(target_layers=2, units_per_drop=2, method="angular_distance")


def test_cached_label_scores_match_one_full_pass_per_label():
    from finlight.causal_lm.classifier import cached_label_scores
    from finlight.causal_lm.scoring import sequence_log_prob

    model = llama(2)
    prompt_ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    labels = [[20], [21, 22], [23, 24, 25]]
    with torch.no_grad():
        cached = cached_label_scores(model, prompt_ids, prompt_mask, labels)
        reference = []
        for tokens in labels:  # the reference: prompt + label in one pass, positions counted from the first real token
            tail = torch.tensor(tokens).expand(2, -1)
            ids, mask = torch.cat([prompt_ids, tail], 1), torch.cat([prompt_mask, torch.ones_like(tail)], 1)
            target = torch.zeros_like(ids)
            target[:, prompt_ids.shape[1]:] = 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
            reference.append(sequence_log_prob(logits, ids, target))
        single = cached_label_scores(model, prompt_ids, prompt_mask, [[20], [21], [23]])
    assert torch.allclose(cached, torch.stack(reference, -1), atol=1e-4)
    assert single.shape == (2, 3) and torch.allclose(single[:, 0], cached[:, 0], atol=1e-4)  # same first token
    first = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                  position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].log_softmax(-1)
    assert torch.allclose(single, first[:, [20, 21, 23]], atol=1e-4)


@pytest.mark.slow
def test_compression_report_scores_a_label_word_classifier(in_tmp, monkeypatch, request):
    """A tiny Llama label-word model (export-style HF dir) and its dynamic INT8: constrained-scoring accuracy equals
    the argmax of cached_label_scores over the rendered test prompts; both speed columns are filled."""
    from conftest import byte_bpe_tokenizer, save_tiny_llama, write_labelled_csv

    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import main

    write_labelled_csv("data.csv", 3)
    texts = [line for line in open("data.csv", encoding="utf-8")]
    tokenizer = byte_bpe_tokenizer(texts, 300)
    save_tiny_llama(in_tmp / "tiny_lm", tokenizer)
    (in_tmp / "run.yaml").write_text(
        "data:\n  class_path: finlight.causal_lm.InstructionDataModule\n  init_args:\n    path: data.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n    max_length: 250\n")
    rows = main(["--config", "run.yaml", "--variant", "tiny=tiny_lm", "--int8", "tiny", "--out", "report",
                 "--threads", "1", "--device", "cpu", "--in_process", "--gen_examples", "4", "--gen_tokens", "3",
                 "--gen_batch", "2"])
    assert [r["variant"] for r in rows] == ["tiny", "tiny+int8"] and [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        assert 0.0 <= row["acc"] <= 1.0 and row["scoring_tokens_per_s"] > 0 and row["gen_tokens_per_s"] > 0
        assert row["tokens_per_s"] is None and row["layers"] == 2
    assert rows[1]["size_mb"] < rows[0]["size_mb"]
    # the accuracy is constrained scoring's, recomputed here from the same prompts
    from finlight.causal_lm.classifier import cached_label_scores
    from finlight.causal_lm.data import PromptRenderer
    from finlight.quantize.ptq import prompt_spec, split_texts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    test_texts, labels, _ = split_texts("run.yaml", "test")
    spec = prompt_spec("run.yaml")
    tok = AutoTokenizer.from_pretrained("tiny_lm")
    renderer = PromptRenderer(tok, spec["instruction"], spec["label_words"], spec["template"],
                              spec["use_chat_template"], spec["answer_prefix"])
    model = AutoModelForCausalLM.from_pretrained("tiny_lm", dtype=torch.float32).eval()
    correct = 0
    with torch.no_grad():
        for text, label in zip(test_texts, labels):
            ids = torch.tensor([renderer.prompt_ids(text)])
            scores = cached_label_scores(model, ids, torch.ones_like(ids), renderer.label_token_ids())
            correct += int(scores.argmax(-1)) == label
    assert rows[0]["acc"] == pytest.approx(correct / len(labels))
    table = (in_tmp / "report" / "report.md").read_text()
    assert "scoring_tokens_per_s" in table and "gen_tokens_per_s" in table
    assert json.loads((in_tmp / "report" / "results.json").read_text())[0]["variant"] == "tiny"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None,
                    reason="gptqmodel / optimum not installed (the optional gptq extra)")
def test_compression_report_gptq_of_a_layer_dropped_label_word_model(in_tmp, monkeypatch, request):
    """GPTQ 4-bit of a decoder that lost a layer, calibrated on rendered prompts: the table row is measured with the
    pruned depth, and is smaller than the float model."""
    from conftest import byte_bpe_tokenizer, write_labelled_csv
    from transformers import AutoModelForCausalLM

    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import main

    write_labelled_csv("data.csv", 3)
    tokenizer = byte_bpe_tokenizer([line for line in open("data.csv", encoding="utf-8")], 300)
    model = llama(3, hidden=64)
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    surgery.drop_layers(model, [1])
    model.save_pretrained(in_tmp / "pruned")
    tokenizer.save_pretrained(in_tmp / "pruned")
    assert AutoModelForCausalLM.from_pretrained(in_tmp / "pruned").config.num_hidden_layers == 2
    (in_tmp / "run.yaml").write_text(
        "data:\n  class_path: finlight.causal_lm.InstructionDataModule\n  init_args:\n    path: data.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n    max_length: 250\n")
    rows = main(["--config", "run.yaml", "--variant", "pruned=pruned", "--gptq", "pruned", "--gptq_group_size", "32",
                 "--calibration_examples", "8", "--out", "report", "--threads", "1", "--device", "cpu",
                 "--in_process", "--gen_examples", "2", "--gen_tokens", "2", "--gen_batch", "2"])
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert rows[1]["variant"] == "pruned+gptq4" and rows[1]["layers"] == 2
    assert rows[1]["size_mb"] < rows[0]["size_mb"] and 0.0 <= rows[1]["acc"] <= 1.0


def test_sapling_depths_must_be_depths_the_run_passed_through(tmp_path, monkeypatch, request, capsys):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import main

    for name, layers in (("epoch00-val_macro_f10.5000.ckpt", 3), ("epoch01-val_macro_f10.6000.ckpt", 1)):
        state = {f"model.model.layers.{i}.mlp.up_proj.weight": torch.zeros(1) for i in range(layers)}
        callbacks = {"RunCheckpoint{'monitor': 'val/macro_f1'}": {"current_score": torch.tensor(0.5)}}
        torch.save({"state_dict": state, "callbacks": callbacks}, tmp_path / name)
    (tmp_path / "run.yaml").write_text("data:\n  init_args:\n    path: none.csv\n")
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "run.yaml"), "--sapling_run", str(tmp_path), "--sapling_depths", "3", "2"])
    err = capsys.readouterr().err
    assert "--sapling_depths [2]" in err and "it has [3, 1]" in err


def test_merge_rows_keeps_earlier_rows_and_replaces_remeasured_ones(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    from compression_report import merge_rows

    earlier = [{"variant": "a", "status": "failed: x", "acc_vs_ref_pt": 1.0}, {"variant": "a+gptq4", "status": "ok"}]
    now = [{"variant": "a", "status": "ok"}, {"variant": "b", "status": "ok"}]
    assert merge_rows(earlier, now) == [{"variant": "a", "status": "ok"}, {"variant": "a+gptq4", "status": "ok"},
                                        {"variant": "b", "status": "ok"}]


@pytest.mark.parametrize("bits", [8, 4])
def test_bnb_keeps_a_tied_lm_head_of_a_causal_lm_in_full_precision(tmp_path, bits):
    """SmolLM2 ties lm_head to the embeddings; bitsandbytes cannot quantize that weight (8-bit: no attribute 'CB',
    4-bit: an AssertionError at the first forward), so `load_bnb` skips it."""
    from finlight.quantize.ptq import load_bnb
    from conftest import byte_bpe_tokenizer

    model = llama(2, hidden=64)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied")
    byte_bpe_tokenizer(["some words for a tokenizer"] * 3, 80).save_pretrained(tmp_path / "tied")
    quantized, _ = load_bnb(str(tmp_path / "tied"), bits=bits, compute_dtype="float32", device=torch.device("cpu"))
    assert type(quantized.lm_head) is torch.nn.Linear
    assert type(quantized.model.layers[0].mlp.up_proj) is not torch.nn.Linear  # the projections are quantized
    with torch.no_grad():
        logits = quantized(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert logits.shape == (1, 4, 60) and torch.isfinite(logits).all()
