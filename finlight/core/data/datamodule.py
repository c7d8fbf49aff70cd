"""`ClassificationDataModule`: labelled text from any source → tokenized, length-grouped batches."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader

from finlight.core.data.cleaning import clean_text, find_duplicates, resolve_duplicates
from finlight.core.data.labels import LabelSpace
from finlight.core.data.records import DropLog, Record
from finlight.core.data.sources import read_records
from finlight.core.data.splits import check_ratios, grouped_stratified_split, stratified_subsample
from finlight.core.data.tokenization import (EncodedDataset, LengthGroupedSampler, PaddingCollator, SortedSampler,
                                        encode_texts)
from finlight.errors import FinlightError
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.data")
SPLITS = ("train", "val", "test")


class ModelTokenizer:
    """``datamodule.tokenizer``: the model's tokenizer (it belongs to the model and travels in its checkpoint),
    found through the Trainer; set it explicitly to use the data module without one."""

    _tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is not None:
            return self._tokenizer
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        if module is None or getattr(module, "tokenizer", None) is None:
            raise FinlightError(f"the {type(self).__name__} has no tokenizer: attach it to a Trainer with a finlight "
                                f"model, or set datamodule.tokenizer")
        return module.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value


class LoaderPerSplit:
    """Lightning's four dataloader hooks, each ``self._loader(split)``."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


class DataReport:
    """Writes ``self.report`` (what was read, split, dropped) to the run folder's ``data_report.json``."""

    def _write_report(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero or run_dir(trainer) is None:
            return
        os.makedirs(run_dir(trainer), exist_ok=True)
        with open(os.path.join(run_dir(trainer), "data_report.json"), "w") as handle:
            json.dump(self.report, handle, indent=2)


class ClassificationDataModule(ModelTokenizer, LoaderPerSplit, DataReport, pl.LightningDataModule):
    """Labelled financial text for sequence classification.

    Give either ``path`` (one source, split into train/val/test by ``split_ratios``, stratified, seeded and
    duplicate-aware) or ``train_path`` with optional ``val_path`` / ``test_path`` (a missing split is carved
    out of train the same way). ``path: demo`` is the demo set shipped with finlight. The facts the model
    needs — ``label_names``, ``class_weights``, ``train_texts`` (for tokenizer training) — are attributes
    after `setup`, and the model reads them from here, so a config never repeats them.

    Args:
        path: one labelled file, or a hub dataset id with ``format: hub``.
        train_path / val_path / test_path: separate files, for data that ships its own splits.
        predict_path: texts to label with ``predict`` (labels not needed); default: the test split.
        format: auto (by suffix) | phrasebank | lines | csv | tsv | jsonl | parquet | hub.
        text_column / label_column: column names for csv / tsv / jsonl / parquet / hub sources.
        encoding: file encoding; default utf-8 (latin-1 for PhraseBank), or the one a byte-order mark names
            (UTF-8 / 16 / 32).
        hub_config / hub_splits: ``datasets.load_dataset`` config name, and which hub split feeds which of
            ours (``{train: train, val: validation, test: test}``; absent ones are carved out of train).
        label_names: the ordered class names (default: the sorted distinct labels of the data).
        label_map: other label vocabularies onto ``label_names``, e.g. ``{"0": negative, bullish: positive}``.
        unknown_labels: ``error`` (names value, file and line) or ``drop`` (counted and reported).
        remove_urls / normalize_whitespace: cleaning, as the reference projects do.
        duplicates: ``keep`` (all rows; equal texts still stay in one split), ``drop`` (one row per text,
            conflicting texts removed) or ``majority`` (one row per text, majority label).
        split_ratios: train / val / test shares for sources without splits.
        train_subsample: train on only this many rows of the train split: a stratified sample drawn with
            ``seed`` after splitting (val and test stay whole), for models too slow for a full epoch.
        seed: seed of the split and (unless ``order_seed``) of the training batch order.
        order_seed: seed of the training batch order alone (default: ``seed``). The split stays ``seed``'s, so
            runs with other order seeds are scored on the same test set and pair up; ``seed_everything`` does not
            reach the order (it is drawn from this seed), so vary this one for runs that differ in data order.
        max_length: tokens per example (incl. special tokens); longer texts are truncated and counted.
        batch_size / eval_batch_size: training / evaluation batch sizes.
        group_by_length: length-grouped training batches (much less padding than random batches).
        class_weights: ``balanced`` (sklearn's ``compute_class_weight``: n / (k · count_c)), an explicit list, or None.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        train_path: Optional[str] = None,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        predict_path: Optional[str] = None,
        format: str = "auto",
        text_column: str = "text",
        label_column: str = "label",
        encoding: Optional[str] = None,
        hub_config: Optional[str] = None,
        hub_splits: Optional[dict[str, str]] = None,
        label_names: Optional[list[str]] = None,
        label_map: Optional[dict[str, str]] = None,
        unknown_labels: Literal["error", "drop"] = "error",
        remove_urls: bool = False,
        normalize_whitespace: bool = True,
        duplicates: Literal["keep", "drop", "majority"] = "keep",
        split_ratios: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = (0.8, 0.1, 0.1),
        train_subsample: Optional[PositiveInt] = None,
        seed: NonNegativeInt = 42,
        order_seed: Optional[NonNegativeInt] = None,
        max_length: PositiveInt = 128,
        batch_size: PositiveInt = 32,
        eval_batch_size: Optional[PositiveInt] = None,
        group_by_length: bool = True,
        class_weights: Union[None, Literal["balanced"], list[NonNegativeFloat]] = None,
        num_workers: NonNegativeInt = 0,
    ):
        super().__init__()
        if path and train_path:
            raise FinlightError("data: set either data.path (one source, split for you) or data.train_path, not both")
        if max_length < 8:
            raise FinlightError(f"data.max_length={max_length} is too small (at least 8 tokens)")
        check_ratios(split_ratios)
        self.save_hyperparameters(logger=False)
        self.hp = self.hparams
        self.label_names: Optional[list[str]] = list(label_names) if label_names else None
        self.class_weights: Optional[list[float]] = None
        self.splits: dict[str, list[Record]] = {}
        self.labels: dict[str, list[int]] = {}
        self.predict_records: list[Record] = []
        self.report: dict = {}
        self._tokenizer = None
        self._encoded: dict[str, tuple[int, EncodedDataset]] = {}
        self._empty_because: dict[str, str] = {}  # split → why cutting by split_ratios left it empty

    # ------------------------------------------------------------------ facts for the model
    @property
    def train_texts(self) -> list[str]:
        return [r.text for r in self.splits.get("train", [])]

    @property
    def predict_texts(self) -> list[str]:
        return [r.text for r in self.predict_records]

    # ------------------------------------------------------------------ reading, cleaning, splitting
    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        hp = self.hp
        drops = DropLog()
        pools = self._read_labelled(drops)
        all_records = [r for records in pools.values() for r in records]
        if not all_records and drops.total():
            raise FinlightError("data: nothing left to train on: every record was dropped ("
                                + "; ".join(f"{len(o)} {reason}" for reason, o in drops.by_reason.items()) + ")")
        if not all_records:
            raise FinlightError("data: no labelled source configured: set data.path or data.train_path")
        if self.label_names is None:
            self.label_names = LabelSpace.infer([r.label for r in all_records], hp.label_map)
            log.info("data.label_names not set; using the sorted labels found: %s", self.label_names)
        space = LabelSpace(self.label_names, hp.label_map)

        indexed: dict[str, tuple[list[Record], list[int]]] = {}
        for name, records in pools.items():
            kept, labels = [], []
            for r in records:
                label = space.index(r.label)
                if label is None:
                    if hp.unknown_labels == "error":
                        raise FinlightError(
                            f"{r.origin}: unknown label {r.label!r}; data.label_names is {self.label_names}. "
                            f"Add it to data.label_map, or set data.unknown_labels: drop"
                        )
                    drops.add("rows with unknown labels", f"{r.origin} ({r.label!r})")
                    continue
                kept.append(r)
                labels.append(label)
            texts = [r.text for r in kept]
            self.report.setdefault("duplicates", {})[name] = find_duplicates(texts, labels).as_dict()
            keep = resolve_duplicates(texts, labels, hp.duplicates)
            for i in sorted(set(range(len(kept))) - set(keep)):  # each dropped row, where it was
                drops.add(f"duplicate rows (data.duplicates={hp.duplicates})", kept[i].origin)
            indexed[name] = ([kept[i] for i in keep], [labels[i] for i in keep])

        self._assign_splits(indexed)
        self._subsample_train()
        self._check_leakage()
        for name in SPLITS:
            self.labels.setdefault(name, [])
            self.splits.setdefault(name, [])
        self._check_label_coverage(training=stage in (None, "fit"))
        self.class_weights = self._class_weights()
        if hp.predict_path:
            self.predict_records = self._clean(read_records(
                hp.predict_path, "auto" if hp.format == "phrasebank" else hp.format, text_column=hp.text_column,
                label_column=None, encoding=hp.encoding, hub_config=hp.hub_config,
                hub_split=(hp.hub_splits or {}).get("test", "test"), drops=drops), drops)
        else:
            self.predict_records = list(self.splits["test"])

        drops.warn("data")
        self.report.update(self._summary(), dropped=drops.as_dict())
        for name in SPLITS:
            log.info("data %-5s %5d examples %s", name, len(self.splits[name]), self.report["label_counts"][name])
        self._write_report()

    def _read_labelled(self, drops: DropLog) -> dict[str, list[Record]]:
        hp = self.hp
        kwargs = dict(text_column=hp.text_column, label_column=hp.label_column, encoding=hp.encoding,
                      hub_config=hp.hub_config, drops=drops)
        if hp.path and hp.format == "hub":
            hub_splits = hp.hub_splits or {"train": "train"}
            unknown = set(hub_splits) - set(SPLITS)
            if unknown:
                raise FinlightError(f"data.hub_splits keys must be among {SPLITS}, got {sorted(unknown)}")
            pools = {ours: read_records(hp.path, "hub", hub_split=theirs, **kwargs) for ours, theirs in hub_splits.items()}
            if set(pools) == {"train"}:
                return {"all": self._clean(pools["train"], drops)}
            return {name: self._clean(records, drops) for name, records in pools.items()}
        if hp.path:
            return {"all": self._clean(read_records(hp.path, hp.format, **kwargs), drops)}
        paths = {"train": hp.train_path, "val": hp.val_path, "test": hp.test_path}
        return {name: self._clean(read_records(p, hp.format, **kwargs), drops) for name, p in paths.items() if p}

    def _clean(self, records: list[Record], drops: DropLog) -> list[Record]:
        out = []
        for r in records:
            text = clean_text(r.text, self.hp.remove_urls, self.hp.normalize_whitespace)
            if not text:
                drops.add("empty texts", r.origin)
                continue
            out.append(Record(text, r.label, r.origin))
        return out

    def _assign_splits(self, indexed: dict[str, tuple[list[Record], list[int]]]) -> None:
        ratios = tuple(self.hp.split_ratios)
        if "all" in indexed:
            records, labels = indexed["all"]
            parts = grouped_stratified_split([r.text for r in records], labels, ratios, self.hp.seed)
            for name, rows in zip(SPLITS, parts):
                self.splits[name] = [records[i] for i in rows]
                self.labels[name] = [labels[i] for i in rows]
            self._explain_empty(records, labels, ratios, SPLITS, self.hp.path)
            return
        for name, (records, labels) in indexed.items():
            self.splits[name], self.labels[name] = records, labels
        missing = [name for name in ("val", "test") if name not in indexed]
        if not missing or "train" not in indexed:
            return
        # carve the missing splits out of train, keeping the configured proportions between them
        shares = [ratios[0]] + [ratios[i] if SPLITS[i] in missing else 0.0 for i in (1, 2)]
        if sum(shares[1:]) == 0:
            return
        carve = tuple(s / sum(shares) for s in shares)
        records, labels = indexed["train"]
        parts = grouped_stratified_split([r.text for r in records], labels, carve, self.hp.seed)
        for name, rows in zip(SPLITS, parts):
            if name == "train" or name in missing:
                self.splits[name] = [records[i] for i in rows]
                self.labels[name] = [labels[i] for i in rows]
        self._explain_empty(records, labels, carve, ["train", *missing], self.hp.train_path)
        log.info("data: carved %s out of %s", " and ".join(missing), self.hp.train_path or self.hp.path)

    def _subsample_train(self) -> None:
        """Keep ``train_subsample`` stratified rows of the train split (recorded in the data report)."""
        size = self.hp.get("train_subsample")
        if size is None:
            return
        labels = self.labels.get("train", [])
        keep = stratified_subsample(labels, size, self.hp.seed)
        self.report["train_subsample"] = {"rows": len(keep), "of": len(labels), "seed": self.hp.seed}
        self.splits["train"] = [self.splits["train"][i] for i in keep]
        self.labels["train"] = [labels[i] for i in keep]
        log.info("data: training on a stratified subsample of %d of %d train rows (seed %d)", len(keep),
                 len(labels), self.hp.seed)

    def _explain_empty(self, records: list[Record], labels: list[int], ratios, names, source) -> None:
        """A split cut by ratio that came out empty: why (few distinct texts per label), and what helps. The
        split is stratified by label and keeps every row of one text together, so a label with g distinct
        texts gives a split of share r round(r·g) of them."""
        texts_per_label = Counter()
        for text, label in dict(zip((r.text for r in records), labels)).items():
            texts_per_label[label] += 1
        distinct = sum(texts_per_label.values())
        most = max(texts_per_label.values(), default=0)
        for name, ratio in zip(SPLITS, ratios):
            if name not in names or self.splits.get(name) or ratio == 0:
                continue
            counts = ", ".join(f"{self.label_names[c]} {n}" for c, n in sorted(texts_per_label.items()))
            share = f"{ratio:.2f}".rstrip("0").rstrip(".")
            fix = "add distinct texts or give data.val_path / data.test_path"
            if most > 1:  # r · most > 0.5 gives the most varied label one text in this split
                fix = f"raise the {name} share of data.split_ratios above {0.5 / most:.2f}, {fix}"
            if distinct < len(records):
                fix += "; data.duplicates: drop trains on each text once if the repeats are accidental"
            self._empty_because[name] = (
                f"{source} has {len(records)} rows but only {distinct} distinct texts ({counts}); duplicate-aware "
                f"splitting keeps all rows of a text in one split, per label, so a {share} share rounds to 0 "
                f"texts of every label: too few for three splits ({fix})")

    def _check_label_coverage(self, training: bool) -> None:
        """Refuse to train on fewer than two of the declared labels; warn about declared labels no split has."""
        counts = {name: Counter(self.labels[name]) for name in SPLITS}
        present = [self.label_names[c] for c in sorted(counts["train"])]
        if training and len(present) < 2:
            held = (f"only label {present[0]!r} ({len(self.labels['train'])} rows)" if present
                    else "no rows")
            raise FinlightError(
                f"data: the training split holds {held} of the declared labels {self.label_names}; a classifier "
                f"needs examples of at least two — check data.label_column, data.label_map and the data file")
        absent = {label: [name for name in SPLITS if self.labels[name] and counts[name][c] == 0]
                  for c, label in enumerate(self.label_names)}
        absent = {label: where for label, where in absent.items() if where}
        if absent:
            log.warning("data: declared label(s) without examples: %s; their per-class metrics are undefined",
                        "; ".join(f"{label!r} in {', '.join(where)}" for label, where in absent.items()))
        self.report["labels_without_examples"] = absent

    def _check_leakage(self) -> None:
        seen = {name: {r.text for r in self.splits.get(name, [])} for name in SPLITS}
        leaks = {f"{a}/{b}": len(seen[a] & seen[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
        self.report["shared_texts_between_splits"] = leaks
        if any(leaks.values()):
            log.warning("data: the given split files share texts (%s): their metrics are optimistic", leaks)

    def _class_weights(self) -> Optional[list[float]]:
        option = self.hp.class_weights
        k = len(self.label_names)
        if option is None:
            return None
        if isinstance(option, str):
            if option != "balanced":
                raise FinlightError(f"data.class_weights={option!r}: use balanced, a list of {k} numbers, or null")
            counts = Counter(self.labels["train"])
            missing = [self.label_names[c] for c in range(k) if counts[c] == 0]
            if missing:
                raise FinlightError(f"data.class_weights=balanced: class {missing} has no training example")
            from sklearn.utils.class_weight import compute_class_weight

            weights = compute_class_weight("balanced", classes=np.arange(k), y=np.asarray(self.labels["train"]))
            return [float(w) for w in weights]  # n / (k · count_c)
        if len(option) != k:
            raise FinlightError(f"data.class_weights has {len(option)} values for {k} labels {self.label_names}")
        return [float(w) for w in option]

    def _summary(self) -> dict:
        return {
            "label_names": self.label_names,
            "sizes": {name: len(self.splits[name]) for name in SPLITS},
            "label_counts": {name: {self.label_names[c]: n for c, n in sorted(Counter(self.labels[name]).items())}
                             for name in SPLITS},
            "class_weights": self.class_weights,
        }

    # ------------------------------------------------------------------ batches
    def dataset(self, split: str) -> EncodedDataset:
        """Tokenized split (cached per tokenizer); ``predict`` has no labels. Subclasses change `_encode`."""
        tokenizer = self.tokenizer
        cached = self._encoded.get(split)
        if cached is not None and cached[0] == id(tokenizer):
            return cached[1]
        if split == "predict":
            texts, labels = self.predict_texts, None
        else:
            texts, labels = [r.text for r in self.splits[split]], self.labels[split]
        if not texts:
            why = self._empty_because.get(split)
            raise FinlightError(f"data: the {split} split is empty: {why}" if why else
                                f"data: the {split} split is empty; check the data paths and split_ratios")
        dataset, truncated = self._encode(tokenizer, texts, labels)
        if truncated:
            log.warning("data %s: %d of %d texts truncated to fit max_length=%d", split, truncated, len(texts),
                        self.hp.max_length)
        self.report.setdefault("truncated", {})[split] = truncated
        self._encoded[split] = (id(tokenizer), dataset)
        return dataset

    def _encode(self, tokenizer, texts: list[str], labels: Optional[list[int]]) -> tuple[EncodedDataset, int]:
        """(dataset of the texts, how many were truncated)."""
        ids, truncated = encode_texts(tokenizer, texts, self.hp.max_length)
        return EncodedDataset(ids, labels), truncated

    def _order_seed(self) -> int:
        order = self.hp.get("order_seed")  # absent from the hyper-parameters of checkpoints saved before it existed
        return self.hp.seed if order is None else order

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        if train and self.hp.group_by_length:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            sampler = LengthGroupedSampler(dataset.lengths, self.hp.batch_size, seed=self._order_seed(),
                                           num_replicas=world, rank=rank)
        elif train:
            import torch
            sampler = None
            generator = torch.Generator().manual_seed(self._order_seed())
        else:
            sampler = SortedSampler(dataset.lengths)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise FinlightError("the tokenizer has no pad token; the model must set one (decoder backbones use EOS)")
        return DataLoader(
            dataset,
            batch_size=self.hp.batch_size if train else (self.hp.eval_batch_size or self.hp.batch_size),
            sampler=sampler,
            shuffle=train and sampler is None,
            generator=generator if train and sampler is None else None,
            collate_fn=PaddingCollator(pad_id),
            num_workers=self.hp.num_workers,
            persistent_workers=self.hp.num_workers > 0,
        )

