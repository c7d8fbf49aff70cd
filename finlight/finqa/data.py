"""`FinQADataModule`: FinQA records as prompt + target token sequences for a causal LM.

Records come from `finlight.finqa.records` (both file formats), prompts from `finlight.finqa.prompts` (context
cut to a token budget, the question never cut), batches from the instruction path's dataset and collator: the
full view (prompt + target + EOS, ``lm_labels`` -100 on the prompt, for the answer-only loss) and the
left-padded prompt view (for generation). The model (`finlight.finqa.FinQAGenerator`) reads
the records of a split back by each batch's ``index`` to score what it generated.
"""

from __future__ import annotations

import logging
import random
from typing import Literal, Optional

import lightning.pytorch as pl
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader

from finlight.core.data.datamodule import DataReport, LoaderPerSplit, ModelTokenizer
from finlight.causal_lm.data import InstructionCollator, InstructionDataset
from finlight.core.data.tokenization import LengthGroupedSampler, SortedSampler
from finlight.errors import FinlightError
from finlight.finqa.prompts import (DEFAULT_TEMPLATE, SECTIONS, FinQAPromptBuilder, check_prompt_options,
                                    context_units, target_text)
from finlight.finqa.records import FinQARecord, load_finqa

log = logging.getLogger("finlight.data")
SPLITS = ("train", "val", "test")
# program vocabulary, so that a from-scratch WordPiece tokenizer has every op as one token
PROGRAM_WORDS = ["add", "subtract", "multiply", "divide", "exp", "greater", "table_max", "table_min",
                 "table_sum", "table_average", "none", "const_", "yes", "no"]


class FinQADataModule(ModelTokenizer, LoaderPerSplit, DataReport, pl.LightningDataModule):
    """FinQA question answering for `FinQAGenerator`.

    Args:
        train_path / val_path / test_path: FinQA JSON files (original or simplified format); each stage
            needs its own (fit: train + val; validate: val; test: test).
        predict_path: questions for ``predict`` (gold not required); default: the test file.
        target: ``program`` (the FinQA program, executed to score it) or ``answer`` (the value itself).
        context_tokens: token budget of the page context in each prompt (the question is never cut).
        oracle_context: use the annotated supporting facts (``gold_inds``, original format only) instead of
            the page; metrics are then named ``*_oracle``.
        context_order: the page's sections in prompt order (default ``table``, ``pre_text``, ``post_text``:
            tables hold most answers, so they are cut last).
        instruction / template / use_chat_template / answer_prefix: prompt rendering (see `PromptRenderer`);
            ``instruction`` defaults to one per target.
        batch_size / eval_batch_size / seed / num_workers: loaders (training batches length-grouped).
        eval_subsample: score at most this many records of the val and test files, drawn at random with
            ``seed`` (file order kept): a slow model on a CPU can afford tens of questions, not hundreds; the
            data report records the sample size. ``limit_*_batches`` would take the longest prompts first.
    """

    def __init__(
        self,
        train_path: Optional[str] = None,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        predict_path: Optional[str] = None,
        target: Literal["answer", "program"] = "program",
        context_tokens: PositiveInt = 1024,
        oracle_context: bool = False,
        context_order: Optional[list[str]] = None,
        instruction: Optional[str] = None,
        template: str = DEFAULT_TEMPLATE,
        use_chat_template: bool = True,
        answer_prefix: str = " ",
        batch_size: PositiveInt = 4,
        eval_batch_size: Optional[PositiveInt] = None,
        seed: NonNegativeInt = 42,
        num_workers: NonNegativeInt = 0,
        eval_subsample: Optional[PositiveInt] = None,
    ):
        super().__init__()
        context_order = list(context_order or SECTIONS)
        check_prompt_options(target, context_tokens, context_order)
        self.save_hyperparameters(logger=False)
        self.hparams["context_order"] = context_order
        self.hp = self.hparams
        self.target = target
        self.oracle_context = oracle_context
        self.records: dict[str, list[FinQARecord]] = {}
        self.predict_records: list[FinQARecord] = []
        self.report: dict = {"target": target, "oracle_context": oracle_context, "context_tokens": context_tokens}
        self._tokenizer = None
        self._builder: Optional[tuple[int, FinQAPromptBuilder]] = None
        self._encoded: dict[str, tuple[int, InstructionDataset]] = {}

    # ------------------------------------------------------------------ facts for the model
    @property
    def metric_suffix(self) -> str:
        """``_oracle`` when prompts hold the gold facts: such scores must never pass for real ones."""
        return "_oracle" if self.oracle_context else ""

    @property
    def train_texts(self) -> list[str]:
        """Texts a from-scratch tokenizer learns from: train prompts' material and targets."""
        texts = list(PROGRAM_WORDS) * 20
        for r in self.records.get("train", []):
            texts.append(r.question)
            texts.extend(context_units(r, self.oracle_context, self.hp.context_order))
            texts.append(target_text(r, self.target))
        return texts

    @property
    def predict_texts(self) -> list[str]:
        return [r.question for r in self.predict_records]

    @property
    def builder(self) -> FinQAPromptBuilder:
        tokenizer = self.tokenizer
        if self._builder is None or self._builder[0] != id(tokenizer):
            hp = self.hp
            self._builder = (id(tokenizer), FinQAPromptBuilder(
                tokenizer, hp.target, hp.context_tokens, hp.oracle_context, hp.context_order, hp.instruction,
                hp.template, hp.use_chat_template, hp.answer_prefix))
        return self._builder[1]

    # ------------------------------------------------------------------ reading
    def setup(self, stage: Optional[str] = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "", SPLITS)
        paths = {"train": self.hp.train_path, "val": self.hp.val_path, "test": self.hp.test_path}
        for split in needed:
            if not paths[split]:
                raise FinlightError(f"data.{split}_path is not set; `{stage}` needs the {split} split")
        for split, path in paths.items():
            if path and split not in self.records:
                self.records[split] = load_finqa(path, require_gold=True)
                self._subsample(split)
                log.info("data %-5s %4d FinQA examples from %s", split, len(self.records[split]), path)
        if self.oracle_context:
            for split in needed:  # fail now, naming the file, rather than at the first batch
                missing = [r for r in self.records[split] if r.gold_inds is None]
                if missing:
                    raise FinlightError(f"{missing[0].origin}: data.oracle_context needs gold_inds, which "
                                        f"{len(missing)} of {len(self.records[split])} {split} records lack (the "
                                        f"simplified format drops them); set data.oracle_context: false")
            log.warning("data: ORACLE context (gold_inds): metrics are *_oracle, an upper bound, not a real score")
        if not self.predict_records:
            if self.hp.predict_path:
                self.predict_records = load_finqa(self.hp.predict_path, require_gold=False)
            elif stage == "predict" and "test" not in self.records:
                raise FinlightError("data.predict_path (or data.test_path) is not set; `predict` needs questions")
            else:
                self.predict_records = list(self.records.get("test", []))
        self.report["sizes"] = {split: len(records) for split, records in self.records.items()}

    def _subsample(self, split: str) -> None:
        """Keep ``eval_subsample`` seeded random records of an evaluation split (in file order)."""
        size, records = self.hp.get("eval_subsample"), self.records[split]
        if split == "train" or size is None or size >= len(records):
            return
        keep = sorted(random.Random(self.hp.seed).sample(range(len(records)), size))
        self.records[split] = [records[i] for i in keep]
        self.report.setdefault("eval_subsample", {})[split] = {"rows": size, "of": len(records),
                                                              "seed": self.hp.seed}
        log.info("data %s: a random subsample of %d of %d records (seed %d)", split, size, len(records),
                 self.hp.seed)

    def split_records(self, split: str) -> list[FinQARecord]:
        return self.predict_records if split == "predict" else self.records[split]

    # ------------------------------------------------------------------ batches
    def dataset(self, split: str) -> InstructionDataset:
        """Prompt (+ target for labelled splits) token ids, cached per tokenizer."""
        tokenizer = self.tokenizer
        cached = self._encoded.get(split)
        if cached is not None and cached[0] == id(tokenizer):
            return cached[1]
        records = self.split_records(split)
        if not records:
            raise FinlightError(f"data: the {split} split is empty")
        builder = self.builder
        sequences, prompt_lengths, cut = [], [], 0
        for record in records:
            prompt, was_cut = builder.prompt_ids(record)
            cut += was_cut
            answer = builder.target_ids(record) if split != "predict" else []
            sequences.append(prompt + answer)
            prompt_lengths.append(len(prompt))
        log.info("data %s: context cut to %d tokens in %d of %d prompts%s", split, self.hp.context_tokens, cut,
                 len(records), " (oracle facts)" if self.oracle_context else "")
        self.report.setdefault("context_cut", {})[split] = cut
        self.report.setdefault("max_sequence_tokens", {})[split] = max(len(s) for s in sequences)
        self._write_report()
        dataset = InstructionDataset(sequences, prompt_lengths)
        self._encoded[split] = (id(tokenizer), dataset)
        return dataset

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        if train:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            sampler = LengthGroupedSampler(dataset.lengths, self.hp.batch_size, seed=self.hp.seed,
                                           num_replicas=world, rank=rank)
        else:
            sampler = SortedSampler(dataset.lengths)  # longest first: batches of similar prompt lengths
        if self.tokenizer.pad_token_id is None:
            raise FinlightError("the tokenizer has no pad token; the model must set one (decoders use EOS)")
        return DataLoader(dataset, batch_size=self.hp.batch_size if train else (self.hp.eval_batch_size or
                                                                              self.hp.batch_size),
                          sampler=sampler, collate_fn=InstructionCollator(self.tokenizer.pad_token_id),
                          num_workers=self.hp.num_workers, persistent_workers=self.hp.num_workers > 0)
