"""Plain helpers shared by several test files: tiny configs, data writers, tiny models, recording callbacks.

Fixtures live in ``conftest.py``; test files import these with ``from helpers import …`` and never from each
other. Classes here are named by ``class_path`` in test configs as ``helpers.<Name>`` (pytest puts ``tests/`` on
``sys.path``; subprocesses get it through ``PYTHONPATH``, see `run_finlight`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from conftest import SENTENCES, byte_bpe_tokenizer, write_labelled_csv

TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- the CLI
def tiny_config(folder: Path, name: str = "tiny", model: dict | None = None, data: dict | None = None,
                trainer: dict | None = None) -> str:
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 2, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 5, **(trainer or {})},
        "model": {"class_path": "finlight.core.SequenceClassifier", "init_args": model or {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                        "vocab_size": 600, "max_position_embeddings": 128},
            "learning_rate": 3e-3, "warmup_ratio": 0.1}},
        "data": {"class_path": "finlight.core.ClassificationDataModule", "init_args": data or {
            "path": "demo", "label_names": ["negative", "neutral", "positive"], "max_length": 48,
            "batch_size": 32}},
    }
    path = folder / f"{name}.yaml"
    path.write_text("# python -m finlight fit --config " + path.name + "\n" + yaml.safe_dump(config))
    return str(path)


def one_line_error(capsys, argv) -> str:
    from finlight.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def run_finlight(*args, cwd, check=True):
    """``python -m finlight ARGS`` in its own process (``tests/`` on its path, for ``conftest.*`` / ``helpers.*``
    class paths)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS)}
    result = subprocess.run([sys.executable, "-m", "finlight", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# ---------------------------------------------------------------------------------------------- hand-made runs (report)
RUN_LABELS = ["negative", "neutral", "positive"]
RUN_TRUTH = [0, 1, 2, 0, 1, 2, 0, 1, 2, 1]


def write_run(folder, seed=None, metrics=None, predicted=None, curve=None, lr=1e-3, checkpoint=None,
              truth=RUN_TRUTH):
    """A run folder as ``fit`` + ``test`` leave it: config, val curve events, test metrics and predictions."""
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(folder, exist_ok=True)
    if seed is not None:
        with open(os.path.join(folder, "config.yaml"), "w") as handle:
            yaml.safe_dump({"seed_everything": seed, "model": {"init_args": {"learning_rate": lr}},
                            "trainer": {"logger": {"init_args": {"version": None}}}}, handle)
    if curve is not None:
        writer = SummaryWriter(folder)
        for epoch, value in enumerate(curve):
            writer.add_scalar("epoch", epoch, 10 * epoch + 9)
            writer.add_scalar("val/macro_f1", value, 10 * epoch + 9)
        writer.close()
    if metrics is not None:
        with open(os.path.join(folder, "test_metrics.json"), "w") as handle:
            json.dump({"checkpoint": checkpoint, "label_names": RUN_LABELS, "metrics": metrics}, handle)
    if predicted is not None:
        with open(os.path.join(folder, "test_predictions.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "label", "predicted"] + [f"prob_{n}" for n in RUN_LABELS])
            for i, (y, p) in enumerate(zip(truth, predicted)):
                writer.writerow([i, RUN_LABELS[y], RUN_LABELS[p]] + [0.8 if c == p else 0.1 for c in range(3)])


# ---------------------------------------------------------------------------------------------- distillation
DISTILL_CORPUS = [f"{t[:-1]} in period {r}." for r in range(4) for ts in SENTENCES.values() for t in ts]


def write_data(folder: Path) -> None:
    write_labelled_csv(folder / "labelled.csv", 3)
    (folder / "corpus").mkdir()
    (folder / "corpus" / "ect.txt").write_text("\n".join(DISTILL_CORPUS) + "\n", encoding="utf-8")


def student_args(name: str, hidden: int = 16, epochs: int = 1, pseudo: bool = True) -> list[str]:
    s = "--model.init_args.scratch"
    args = ["--seed_everything", "3", "--experiment", name, "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "2", "--report.write_png", "false",
            "--model", "finlight.distill.DistillationStudent",
            f"{s}.hidden_size", str(hidden), f"{s}.num_layers", "2", f"{s}.num_heads", "2",
            f"{s}.intermediate_size", "32", f"{s}.vocab_size", "300", f"{s}.max_position_embeddings", "64",
            "--model.init_args.learning_rate", "3e-3",
            "--data", "finlight.distill.PseudoLabelledDataModule",
            "--data.init_args.path", "labelled.csv", "--data.init_args.label_names", "[negative, neutral, positive]",
            "--data.init_args.batch_size", "16", "--data.init_args.max_length", "32"]
    return args + (["--data.init_args.pseudo_label_path", "pl.jsonl"] if pseudo else [])


# ---------------------------------------------------------------------------------------------- dendrites
def dendritic_config(folder: Path, max_epochs: int = 6) -> str:
    path = Path(tiny_config(folder, name="dendritic", trainer={"max_epochs": max_epochs, "limit_train_batches": 3,
                                                                    "log_every_n_steps": 1}))
    config = yaml.safe_load(path.read_text())
    config["model"] = {"class_path": "finlight.dendrites.DendriticClassifier", "init_args": {
        "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                    "vocab_size": 600, "max_position_embeddings": 128},
        "learning_rate": 3e-3, "dendrites": {"smoke_test": True}}}
    path.write_text("# python -m finlight fit --config dendritic.yaml\n" + yaml.safe_dump(config))
    return str(path)


# ---------------------------------------------------------------------------------------------- layer dropping
SCRATCH = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64, "vocab_size": 600,
           "max_position_embeddings": 128}


def drop_config(folder: Path, name: str, epochs: int = 3, extra_callbacks=(), **drop_args) -> str:
    callback = {"class_path": "finlight.prune.SuccessiveLayerDrop",
                "init_args": {"every_n_epochs": 1, "target_layers": 1, "calibration_examples": 24, **drop_args}}
    return tiny_config(folder, name, model={"scratch": SCRATCH, "learning_rate": 3e-3, "warmup_ratio": 0.1},
                       trainer={"max_epochs": epochs, "callbacks": [callback, *extra_callbacks]})


class RecordOptimizer(pl.Callback):
    """Keeps what the trainer optimises at each epoch start (runs after the drop: callbacks go in order)."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.seen.append((params, optimizer.param_groups[0]["lr"], trainer.global_step))


class ProbeMetric(pl.Callback):
    """Logs ``val/probe``: 1 at epoch 0, then 0 — a monitored metric that collapses right after the first drop
    — and keeps epoch 0's real ``val/macro_f1``."""

    def __init__(self):
        self.first_macro_f1 = None

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("val/probe", 1.0 if trainer.current_epoch == 0 else 0.0)

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch == 0 and not trainer.sanity_checking:
            self.first_macro_f1 = float(trainer.callback_metrics["val/macro_f1"])


def decoder_config(folder, method: str) -> str:
    """A tiny from-scratch 3-layer Llama label-word classifier (`CausalLMClassifier`) dropping layers 3 → 1."""
    write_labelled_csv(folder / "rows.csv", 3)
    config = {
        "seed_everything": 3,
        "trainer": {"max_epochs": 3, "enable_progress_bar": False, "enable_model_summary": False,
                    "deterministic": True, "log_every_n_steps": 1,
                    "callbacks": [{"class_path": "finlight.prune.SuccessiveLayerDrop",
                                   "init_args": {"every_n_epochs": 1, "method": method, "target_layers": 1,
                                                 "calibration_examples": 10, "tolerance": 1.0}}]},
        "checkpoint": {"save_top_k": -1},
        "model": {"class_path": "finlight.causal_lm.CausalLMClassifier", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "num_kv_heads": 1,
                        "intermediate_size": 64, "vocab_size": 400, "max_position_embeddings": 160},
            "learning_rate": 3e-3}},
        "data": {"class_path": "finlight.causal_lm.InstructionDataModule", "init_args": {
            "path": "rows.csv", "label_names": ["negative", "neutral", "positive"],
            "split_ratios": [0.5, 0.25, 0.25], "max_length": 128, "batch_size": 8, "eval_batch_size": 8}},
    }
    path = folder / f"decoder_{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def sublayer_run_config(folder, name: str = "trimllm_tiny", extra_callback: str = "helpers.RecordOptimizer",
                        **drop_args) -> str:
    """The tiny 3-layer Llama label-word classifier of `decoder_config`, trimmed 6 → 3 parts."""
    config = yaml.safe_load(open(decoder_config(folder, "ablation")))
    config["trainer"]["max_epochs"] = 4
    config["trainer"]["callbacks"] = [
        {"class_path": "finlight.prune.SuccessiveLayerDrop",
         "init_args": {"granularity": "sublayer", "target_sublayers": 3, "calibration_examples": 10,
                       "tolerance": 1.0, **drop_args}},
        {"class_path": extra_callback}]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# ---------------------------------------------------------------------------------------------- tiny models (surgery)
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
MASK = (IDS != 0).long()


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=3)).eval()


def albert():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(0)
    return AlbertForSequenceClassification(AlbertConfig(
        vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=3)).eval()


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, use_sliding_window=True, sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def cache_gap(model) -> float:
    """Largest logit difference between one full forward and a prompt + token-by-token pass through the KV
    cache. Greedy tokens of a random-init model hide wrong cache positions (gaps ~1e-3 keep the argmax), this
    does not."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device=model.device)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    return float((torch.cat(steps, dim=1) - full).abs().max())


def save_pruned_llama(path, hidden: int = 64):
    """A 3-layer Llama without layer 0's attention and layer 2's MLP, saved to ``path`` (and returned)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from finlight.prune.surgery import drop_unit

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    drop_unit(model, ("attention", 0))
    drop_unit(model, ("mlp", 2))
    model.save_pretrained(path)
    return model


def load_4bit(path, place, compute_dtype):
    """``from_pretrained`` in bitsandbytes 4-bit onto ``place``; asserts that every saved key fitted."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from finlight.core.removals import removal_aware_load

    with removal_aware_load():
        quantized, info = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype),
            device_map={"": place}, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return quantized


# ---------------------------------------------------------------------------------------------- FinQA
FINQA_SENTENCES = ["net revenue rose to $ 5829 million in 2015 .", "the company repurchased 2 million shares .",
                   "interest expense decreased by 12 % year over year .", "see note 14 to the financial statements ."]


def finqa_bpe_tokenizer(chat: bool = True):
    """A byte-level BPE trained here on the sentences above and a FinQA program."""
    return byte_bpe_tokenizer(FINQA_SENTENCES * 3 + ["subtract(5829, 5735), divide(#0, 5735)"] * 3, 400, chat=chat)
