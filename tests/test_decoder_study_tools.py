"""What the decoder studies of issue 18 need beyond the existing causal-LM path: a stratified training subsample
(val/test untouched), generate-and-parse answers kept verbatim with a generation speed, generated-token counting,
and a seeded FinQA evaluation subsample."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from finlight.causal_lm.classifier import CausalLMClassifier, generated_lengths, greedy_generate
from finlight.causal_lm.data import InstructionDataModule
from finlight.core.data.splits import stratified_subsample
from finlight.errors import FinlightError

import conftest
from test_causal_lm import WORDS, byte_bpe_tokenizer, datamodule_with, module_on, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")
FSA = conftest.SHARED_DATA / "financial_sentiment_kaggle" / "data.csv"
FINQA_DEV = conftest.SHARED_DATA / "finqa" / "dev_200.json"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return conftest.save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), byte_bpe_tokenizer())


# ---------------------------------------------------------------------------------------------- subsampling
def test_stratified_subsample_keeps_class_shares_is_seeded_and_refuses_bad_sizes():
    labels = [0] * 600 + [1] * 300 + [2] * 100
    kept = stratified_subsample(labels, 100, seed=42)
    assert len(kept) == len(set(kept)) == 100 and kept == sorted(kept)
    assert Counter(labels[i] for i in kept) == {0: 60, 1: 30, 2: 10}
    assert stratified_subsample(labels, 100, seed=42) == kept
    assert stratified_subsample(labels, 100, seed=7) != kept
    with pytest.raises(FinlightError, match="train_subsample=1000: the train split has only 1000 rows"):
        stratified_subsample(labels, 1000, seed=42)
    with pytest.raises(FinlightError, match="at least one row per label"):
        stratified_subsample(labels, 2, seed=42)


def test_train_subsample_of_the_kaggle_set_leaves_val_whole_and_unchanged():
    """The real FSA file, the study's split: only train shrinks, its label mix kept; val is the very same rows."""
    common = dict(path=str(FSA), text_column="Sentence", label_column="Sentiment",
                  label_names=["negative", "neutral", "positive"], remove_urls=True, split_ratios=(0.9, 0.1, 0.0))
    full = InstructionDataModule(**common)
    full.setup("fit")
    small = InstructionDataModule(train_subsample=300, **common)
    small.setup("fit")
    assert len(small.splits["train"]) == 300 and len(full.splits["train"]) > 5000
    assert [r.text for r in small.splits["val"]] == [r.text for r in full.splits["val"]]
    full_texts = {r.text for r in full.splits["train"]}
    assert all(r.text in full_texts for r in small.splits["train"])
    shares = {c: n / len(full.labels["train"]) for c, n in Counter(full.labels["train"]).items()}
    for c, n in Counter(small.labels["train"]).items():
        assert abs(n - 300 * shares[c]) <= 1
    assert small.report["train_subsample"] == {"rows": 300, "of": len(full.splits["train"]), "seed": 42}
    assert small.report["sizes"]["train"] == 300


# ---------------------------------------------------------------------------------------------- generation
def test_generated_lengths_stop_at_the_first_eos_and_count_it():
    eos = 9
    new = torch.tensor([[5, 6, eos, eos], [eos, eos, eos, eos], [1, 2, 3, 4], [7, eos, 3, eos]])
    assert generated_lengths(new, eos) == 3 + 1 + 4 + 2
    assert generated_lengths(new, [eos, 4]) == 3 + 1 + 4 + 2  # a list of EOS ids: row 3 ends at its last token
    assert generated_lengths(new, [3]) == 4 + 4 + 3 + 3


def test_greedy_generate_accumulates_prompt_and_new_tokens(in_tmp, tiny_llama_dir):
    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm, evaluation="generate", max_new_tokens=3)
    batch = next(iter(dm.val_dataloader()))
    stats: dict = {}
    greedy_generate(module.model, module.tokenizer, batch["prompt_ids"], batch["prompt_mask"], 3, stats)
    greedy_generate(module.model, module.tokenizer, batch["prompt_ids"], batch["prompt_mask"], 3, stats)
    n = len(batch["prompt_ids"])
    assert stats["prompt_tokens"] == 2 * int(batch["prompt_mask"].sum())
    assert 2 * n <= stats["new_tokens"] <= 2 * 3 * n and stats["seconds"] > 0


def test_generate_evaluation_writes_every_answer_verbatim_and_a_generation_speed(in_tmp, tiny_llama_dir):
    import lightning.pytorch as pl

    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm, evaluation="generate", max_new_tokens=3)
    real = module.generate_answers
    val_labels = dm.labels["val"]
    fixed = {i: (f" {WORDS[label]}!" if i % 2 == 0 else "no idea") for i, label in enumerate(val_labels)}

    def answers(batch):
        real(batch)  # the model really decodes (and is timed); the answers are then fixed for checking
        return [fixed[int(i)] for i in batch["index"]]

    module.generate_answers = answers
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(in_tmp))
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/generation_tokens_per_s"] > 0 and metrics["val/prompt_tokens_per_generate_s"] > 0
    rows = [json.loads(line) for line in (in_tmp / "val_generations.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(val_labels)))
    for r in rows:
        assert r["answer"] == fixed[r["index"]]
        assert r["label"] == dm.label_names[val_labels[r["index"]]]
        assert r["parsed"] == (r["label"] if r["index"] % 2 == 0 else None)
    assert metrics["val/unparseable_rate"] == pytest.approx(sum(r["parsed"] is None for r in rows) / len(rows))


def test_constrained_evaluation_writes_per_example_predictions_not_generations(in_tmp, tiny_llama_dir):
    import lightning.pytorch as pl

    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm, evaluation="constrained")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(in_tmp))
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert "val/generation_tokens_per_s" not in metrics and metrics["val/scoring_tokens_per_s"] > 0
    assert not (in_tmp / "val_generations.jsonl").exists()
    rows = [json.loads(line) for line in (in_tmp / "val_predictions.jsonl").read_text().splitlines()]
    val_labels = dm.labels["val"]
    assert [r["index"] for r in rows] == list(range(len(val_labels)))
    for r in rows:
        assert r["label"] == dm.label_names[val_labels[r["index"]]]
        assert len(r["probs"]) == len(dm.label_names) and sum(r["probs"]) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == dm.label_names[max(range(len(r["probs"])), key=r["probs"].__getitem__)]
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert metrics["val/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert not (in_tmp / "test_predictions.csv").exists()
    tested = trainer.test(module, datamodule=dm, verbose=False)[0]
    import csv

    table = list(csv.DictReader((in_tmp / "test_predictions.csv").open(encoding="utf-8")))
    test_labels = dm.labels["test"]
    assert [int(r["index"]) for r in table] == list(range(len(test_labels)))
    assert [r["label"] for r in table] == [dm.label_names[y] for y in test_labels]
    assert tested["test/acc"] == pytest.approx(sum(r["label"] == r["predicted"] for r in table) / len(table), abs=1e-6)
    assert {f"prob_{n}" for n in dm.label_names} <= set(table[0])


@pytest.mark.slow
def test_real_smollm2_answers_the_fsa_prompt_and_the_answers_are_kept(in_tmp, prepared_smollm2):
    """The real instruct model, untuned, on four Kaggle FSA validation sentences: real answers come back and are
    written as they are (parsed or not)."""
    import lightning.pytorch as pl

    dm = InstructionDataModule(path=str(FSA), text_column="Sentence", label_column="Sentiment",
                               label_names=["negative", "neutral", "positive"], label_words=WORDS, remove_urls=True,
                               split_ratios=(0.9, 0.1, 0.0), eval_batch_size=4,
                               instruction="You are a financial sentiment analyst. Given the financial text, reply "
                                           "with exactly one word: Positive, Negative, or Neutral.")
    module = CausalLMClassifier(backbone=str(prepared_smollm2 / "smollm2-135m-instruct"), evaluation="generate",
                                max_new_tokens=4)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(in_tmp), limit_val_batches=1)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    rows = [json.loads(line) for line in (in_tmp / "val_generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["answer"], str) for r in rows)
    assert metrics["val/unparseable_rate"] == pytest.approx(sum(r["parsed"] is None for r in rows) / 4)
    assert metrics["val/generation_tokens_per_s"] > 0


# ---------------------------------------------------------------------------------------------- FinQA
def test_finqa_eval_subsample_is_seeded_in_file_order_and_recorded():
    from finlight.finqa.data import FinQADataModule
    from finlight.finqa.records import load_finqa

    every = load_finqa(str(FINQA_DEV))
    dm = FinQADataModule(val_path=str(FINQA_DEV), eval_subsample=20)
    dm.setup("validate")
    picked = dm.records["val"]
    positions = [next(i for i, r in enumerate(every) if r is not None and r.question == p.question
                      and r.answer == p.answer) for p in picked]
    assert len(picked) == 20 and positions == sorted(positions)
    again = FinQADataModule(val_path=str(FINQA_DEV), eval_subsample=20)
    again.setup("validate")
    assert [r.question for r in again.records["val"]] == [r.question for r in picked]
    other = FinQADataModule(val_path=str(FINQA_DEV), eval_subsample=20, seed=1)
    other.setup("validate")
    assert [r.question for r in other.records["val"]] != [r.question for r in picked]
    assert dm.report["eval_subsample"] == {"val": {"rows": 20, "of": len(every), "seed": 42}}
    assert dm.report["sizes"]["val"] == 20
    whole = FinQADataModule(val_path=str(FINQA_DEV), eval_subsample=10_000)
    whole.setup("validate")
    assert len(whole.records["val"]) == len(every) and "eval_subsample" not in whole.report
