"""Tokenizer training, encoding, collation, samplers."""

import subprocess
import sys

import numpy as np
import pytest

from finlight.core.data.tokenization import (LengthGroupedSampler, PaddingCollator, SortedSampler, encode_texts,
                                        padding_efficiency, train_wordpiece_tokenizer, wordpiece_vocabulary)

from conftest import SENTENCES

TEXTS = [t for ts in SENTENCES.values() for t in ts] * 2


@pytest.mark.slow
def test_wordpiece_vocabulary_is_deterministic_across_processes():
    code = ("from finlight.core.data.tokenization import wordpiece_vocabulary as w; from conftest import SENTENCES;"
            "print('|'.join(w([t for ts in SENTENCES.values() for t in ts] * 2, 120)))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd="tests", env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
               for seed in (1, 2)}
    assert len(outputs) == 1
    assert outputs.pop().strip().split("|") == wordpiece_vocabulary(TEXTS, 120)


def test_trained_tokenizer_round_trips_words_and_adds_specials():
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=300)
    ids = tokenizer("Quarterly profit rose")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "quarterly profit rose"
    assert tokenizer.pad_token_id == 0


def test_encode_counts_truncation():
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=300)
    ids, truncated = encode_texts(tokenizer, ["profit", " ".join(["profit"] * 50)], max_length=10)
    assert truncated == 1
    assert len(ids[1]) == 10 and ids[1][-1] == tokenizer.sep_token_id
    assert len(ids[0]) == 3


def test_collator_pads_to_the_longest_in_batch():
    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": 2, "index": 4},
        {"input_ids": [5], "labels": 0, "index": 1},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [2, 0] and batch["index"].tolist() == [4, 1]


def test_length_grouped_sampler_is_a_seeded_permutation_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    batches = [first[i : i + 32] for i in range(0, 1000, 32)]
    random_batches = [list(b) for b in np.array_split(rng.permutation(1000), 32)]
    assert padding_efficiency(lengths, batches) > 0.9 > padding_efficiency(lengths, random_batches) + 0.2


def test_sorted_sampler_orders_longest_first():
    assert list(SortedSampler([3, 9, 1, 9])) == [1, 3, 0, 2]
