"""Shared fixtures: offline hub, quiet loaders, tiny local models and data written by the tests themselves."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier saved like a hub download, with a head in ProsusAI/finbert's label order."""
    from transformers import BertConfig, BertForSequenceClassification

    from finlight.data.tokenization import train_wordpiece_tokenizer

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
