"""Post-training quantization baselines (finlight.quantize.ptq): bitsandbytes 4/8-bit and GPTQ 4-bit of a tiny
random-init Llama classifier saved like an export, on CPU; the CUDA paths are marked ``gpu``."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import SENTENCES, write_labelled_csv
from finlight.quantize.ptq import (auto_class, block_name, calibration_sample, check_model_dir, gptq_quantize,
                                  load_bnb, load_quantized_dir, quantize_main, split_texts)
from finlight.errors import FinlightError

HAS_GPTQ = importlib.util.find_spec("gptqmodel") is not None and importlib.util.find_spec("optimum") is not None
TEXTS = [t for ts in SENTENCES.values() for t in ts]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    path = tmp_path_factory.mktemp("tiny_llama_cls")
    tokenizer = train_wordpiece_tokenizer(TEXTS * 3, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, num_labels=3,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def logits(model, tokenizer, device="cpu"):
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        return model(**encoded).logits.float().cpu()


def full_logits(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    return logits(model, AutoTokenizer.from_pretrained(folder))


def quantized_projections(model) -> list[str]:
    """Names of the decoder projections that are no longer plain float ``nn.Linear``."""
    return [n for n, m in model.named_modules() if n.split(".")[-1] in PROJECTIONS and type(m) is not nn.Linear]


@pytest.mark.parametrize("bits", [4, 8])
def test_bnb_load_quantizes_the_projections_keeps_the_head_and_round_trips(llama_dir, tmp_path, bits, one_thread):
    import bitsandbytes as bnb

    model, tokenizer = load_bnb(str(llama_dir), bits=bits, compute_dtype="float32", device=torch.device("cpu"))
    expected_type = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, expected_type)]
    assert len(quantized) == 2 * len(PROJECTIONS)  # every projection of both layers
    assert type(model.score) is nn.Linear and model.score.weight.dtype == torch.float32  # the head stays float
    reference, got = full_logits(llama_dir), logits(model, tokenizer)
    assert got.shape == reference.shape == (len(TEXTS), 3)
    error = (got - reference).abs().max()
    assert 0 < error < 0.25 * reference.abs().max() + 0.05  # quantized: close, but not the same numbers

    model.save_pretrained(tmp_path / "q")
    tokenizer.save_pretrained(tmp_path / "q")
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "bitsandbytes"
    reloaded, reloaded_tokenizer = load_quantized_dir(str(tmp_path / "q"), device=torch.device("cpu"))
    assert len([m for m in reloaded.modules() if isinstance(m, expected_type)]) == len(quantized)
    torch.testing.assert_close(logits(reloaded, reloaded_tokenizer), got, atol=1e-5, rtol=0)


def test_calibration_texts_come_from_the_training_split_reproducibly(in_tmp):
    write_labelled_csv("rows.csv", 3)
    config = in_tmp / "x.yaml"
    config.write_text("data:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n"
                      "    path: rows.csv\n    label_names: [negative, neutral, positive]\n"
                      "    split_ratios: [0.5, 0.25, 0.25]\n    seed: 3\n    max_length: 40\n")
    train, train_labels, max_length = split_texts(str(config), "train")
    val, _, _ = split_texts(str(config), "val")
    test, _, _ = split_texts(str(config), "test")
    assert max_length == 40 and len(train) == len(train_labels) and len(train) + len(val) + len(test) == 54
    assert len(train) > len(test) and not set(train) & set(test)
    sample = calibration_sample(train, 10, seed=1)
    assert sample == calibration_sample(train, 10, seed=1) and len(set(sample)) == 10 and set(sample) <= set(train)
    assert calibration_sample(train, 100) == train
    with pytest.raises(FinlightError, match="no data.init_args"):
        (in_tmp / "empty.yaml").write_text("trainer: {}\n")
        split_texts(str(in_tmp / "empty.yaml"))


def test_model_class_and_gptq_block_follow_the_saved_architecture(llama_dir, tiny_hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    assert auto_class(str(tmp_path)) is AutoModelForCausalLM and block_name(str(tmp_path)) == "model.layers"
    assert auto_class(str(llama_dir)) is AutoModelForSequenceClassification
    assert block_name(str(llama_dir)) == "model.layers"
    assert block_name(str(tiny_hf_dir)) == "bert.encoder.layer"


def test_mistakes_are_one_line_errors(tmp_path, llama_dir):
    with pytest.raises(FinlightError, match="no config.json.*finlight export"):
        check_model_dir(str(tmp_path))
    with pytest.raises(FinlightError, match="needs --config"):
        quantize_main(["--model_dir", str(llama_dir), "--method", "gptq4", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(FinlightError, match="no such file"):
        quantize_main(["--model_dir", str(llama_dir), "--method", "gptq4", "--output_dir", str(tmp_path / "o"),
                       "--config", str(tmp_path / "missing.yaml")])


@pytest.mark.skipif(not HAS_GPTQ, reason="gptqmodel / optimum not installed (the optional gptq extra)")
def test_gptq_4bit_on_cpu_quantizes_calibrated_and_reloads_exactly(llama_dir, tmp_path, one_thread):
    # the first GPTQ call in a fresh environment builds gptqmodel's CPU kernels (~40-100 s, then cached)
    out = gptq_quantize(str(llama_dir), str(tmp_path / "gptq"), calibration_sample(TEXTS, 12), bits=4,
                        group_size=32, device=torch.device("cpu"))
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == 4 and config["group_size"] == 32
    assert json.loads((out / "gptq_calibration.json").read_text())["calibration_examples"] == 12
    model, tokenizer = load_quantized_dir(str(out), device=torch.device("cpu"))
    assert len(quantized_projections(model)) == 2 * len(PROJECTIONS)
    assert type(model.score) is nn.Linear
    reference, got = full_logits(llama_dir), logits(model, tokenizer)
    error = (got - reference).abs().max()
    assert 0 < error < 0.25 * reference.abs().max() + 0.05
    assert (got.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75
    again, _ = load_quantized_dir(str(out), device=torch.device("cpu"))
    torch.testing.assert_close(logits(again, tokenizer), got, atol=1e-6, rtol=0)


@pytest.mark.skipif(not HAS_GPTQ, reason="gptqmodel / optimum not installed (the optional gptq extra)")
def test_quantize_command_gptq_of_an_encoder_calibrates_on_the_train_split(in_tmp, tiny_hf_dir, one_thread):
    from finlight.cli import main

    write_labelled_csv("rows.csv", 2)
    (in_tmp / "run.yaml").write_text(
        "data:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n    path: rows.csv\n"
        "    label_names: [negative, neutral, positive]\n    split_ratios: [0.5, 0.25, 0.25]\n")
    main(["quantize", "--model_dir", str(tiny_hf_dir), "--method", "gptq4", "--output_dir", "q", "--config",
          "run.yaml", "--calibration_examples", "8", "--group_size", "32"])
    assert json.loads((in_tmp / "q" / "gptq_calibration.json").read_text())["calibration_examples"] == 8
    saved = json.loads((in_tmp / "q" / "config.json").read_text())["quantization_config"]
    assert saved["block_name_to_quantize"] == "bert.encoder.layer" and not saved["dataset"]  # no texts copied
    model, tokenizer = load_quantized_dir("q", device=torch.device("cpu"))
    linears = [n for n, m in model.named_modules() if n.startswith("bert.encoder.layer.") and
               n.split(".")[-1] in ("query", "key", "value", "dense")]
    assert linears and all(type(model.get_submodule(n)) is not nn.Linear for n in linears)  # all 6 per layer
    assert type(model.classifier) is nn.Linear  # outside the blocks: stays float
    reference, got = full_logits(tiny_hf_dir), logits(model, tokenizer)
    assert 0 < (got - reference).abs().max() < 0.25 * reference.abs().max() + 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_bnb_on_cuda(llama_dir, bits):
    model, tokenizer = load_bnb(str(llama_dir), bits=bits, compute_dtype="float16", device=torch.device("cuda"))
    assert model.score.weight.device.type == "cuda"
    got, reference = logits(model, tokenizer, "cuda"), full_logits(llama_dir)
    assert (got - reference).abs().max() < 0.25 * reference.abs().max() + 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPTQ, reason="gptqmodel / optimum not installed (the optional gptq extra)")
def test_gptq_on_cuda(llama_dir, tmp_path):
    out = gptq_quantize(str(llama_dir), str(tmp_path / "gptq"), TEXTS, group_size=32, device=torch.device("cuda"))
    model, tokenizer = load_quantized_dir(str(out), device=torch.device("cuda"))
    assert len(quantized_projections(model)) == 2 * len(PROJECTIONS)
    got, reference = logits(model, tokenizer, "cuda"), full_logits(llama_dir)
    assert (got - reference).abs().max() < 0.25 * reference.abs().max() + 0.05
