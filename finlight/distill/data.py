"""`PseudoLabelledDataModule`: the labelled data module, plus what distillation needs per example.

* ``pseudo_label_path`` (stage 1): the train split becomes the rows of a ``pseudo-label`` file (the
  teacher's hard label and its logits, as soft targets); val/test stay the labelled splits, so checkpoint
  selection and the test report use gold labels. Without it (stage 2, baselines) this is exactly
  `ClassificationDataModule`.
* ``pseudo_label_balance``: a teacher labelling an unlabeled corpus can starve a class (MiniLM on earnings-call
  sentences: a few % negative against 13 % in PhraseBank). The option subsamples the pseudo-labelled rows to a
  class balance (that of the labelled train split, or given proportions), keeping every row of the class that
  limits it; the other remedy, reweighting, is ``class_weights: balanced``.
* Online teacher with its own tokenizer: every split is also encoded with the teacher's tokenizer, and
  batches carry ``teacher_input_ids`` / ``teacher_attention_mask`` beside the student's.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from finlight.core.data.datamodule import ClassificationDataModule
from finlight.core.data.records import Record
from finlight.core.data.tokenization import EncodedDataset, PaddingCollator, encode_texts
from finlight.errors import FinlightError

log = logging.getLogger("finlight.data")


@dataclass
class PseudoLabels:
    texts: list[str]
    labels: list[int]
    logits: torch.Tensor  # [n, k] in the data's label order
    origins: list[str]
    teacher: str


def read_pseudo_labels(path: str, label_names: list[str]) -> PseudoLabels:
    """Rows of a ``pseudo-label`` file, with logits re-ordered to ``label_names`` by name."""
    from finlight.distill.pseudo_label import read_progress

    if not os.path.isfile(path):
        raise FinlightError(f"data.pseudo_label_path={path}: no such file; write it with `python -m finlight "
                            f"pseudo-label`")
    progress = read_progress(path)
    if progress is not None and not progress.get("complete"):
        raise FinlightError(f"{path}: incomplete ({progress.get('rows_done')} of {progress.get('total_rows')} rows); "
                            f"rerun the same pseudo-label command to finish it")
    wanted = [n.casefold() for n in label_names]
    texts, labels, logits, origins, teachers = [], [], [], [], Counter()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
                by_name = {str(k).casefold(): float(v) for k, v in row["logits"].items()}
                text, label = row["text"], str(row["label"]).casefold()
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
                raise FinlightError(f"{where}: not a pseudo-label row (needs text, label, logits by label name)") from None
            if sorted(by_name) != sorted(wanted) or label not in wanted:
                raise FinlightError(f"{where}: the teacher's labels {sorted(by_name)} (row label {label!r}) are not "
                                    f"data.label_names {label_names}")
            texts.append(text)
            labels.append(wanted.index(label))
            logits.append([by_name[n] for n in wanted])
            origins.append(row.get("source") or where)
            teachers[row.get("teacher", "?")] += 1
    if not texts:
        raise FinlightError(f"{path}: holds no pseudo-labelled rows")
    if len(teachers) > 1:
        raise FinlightError(f"{path}: rows from {len(teachers)} different teachers ({list(teachers)[:2]} …)")
    return PseudoLabels(texts, labels, torch.tensor(logits, dtype=torch.float32), origins, next(iter(teachers)))


def balanced_subsample(labels: Sequence[int], proportions: Sequence[float], seed: int = 0) -> list[int]:
    """Indices (sorted) of the largest subsample of ``labels`` whose class shares are ``proportions``.

    The total is ``n = min_c count_c / p_c`` over the classes with ``p_c > 0`` (the class that runs out first
    keeps all its rows); class c contributes ``floor(n · p_c)`` rows drawn without replacement with ``seed``.
    A class with proportion 0 is dropped. Same labels, proportions and seed → the same indices.
    """
    import numpy as np

    k = len(proportions)
    p = np.asarray(proportions, dtype=float)
    if k == 0 or (p < 0).any() or p.sum() <= 0:
        raise FinlightError(f"data.pseudo_label_balance={list(proportions)}: needs non-negative shares, not all 0")
    p = p / p.sum()
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=k)[:k]
    empty = [c for c in range(k) if p[c] > 0 and counts[c] == 0]
    if empty:
        raise FinlightError(f"data.pseudo_label_balance: class index {empty} has no pseudo-labelled row; it cannot "
                            f"be balanced (label more text, or give it share 0)")
    total = min(counts[c] / p[c] for c in range(k) if p[c] > 0)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(k):
        members = np.nonzero(y == c)[0]
        take = min(len(members), int(np.floor(total * p[c] + 1e-9)))
        keep.extend(rng.choice(members, size=take, replace=False).tolist() if take else [])
    return sorted(int(i) for i in keep)


class DistillationDataset(EncodedDataset):
    """`EncodedDataset` whose items may also carry ``teacher_logits`` and ``teacher_input_ids``."""

    def __init__(self, input_ids, labels=None, teacher_logits: Optional[torch.Tensor] = None,
                 teacher_input_ids: Optional[list[list[int]]] = None):
        super().__init__(input_ids, labels)
        self.teacher_logits = teacher_logits
        self.teacher_input_ids = teacher_input_ids

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[index]
        if self.teacher_input_ids is not None:
            item["teacher_input_ids"] = self.teacher_input_ids[index]
        return item


class DistillationCollator:
    """`PaddingCollator` for the student's tokens, a second one for the teacher's, and stacked soft targets."""

    def __init__(self, student: PaddingCollator, teacher_pad_token_id: Optional[int] = None):
        self.student = student
        self.teacher = PaddingCollator(teacher_pad_token_id) if teacher_pad_token_id is not None else None

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.student(items)
        if "teacher_logits" in items[0]:
            batch["teacher_logits"] = torch.stack([item["teacher_logits"] for item in items])
        if self.teacher is not None and "teacher_input_ids" in items[0]:
            padded = self.teacher([{"input_ids": item["teacher_input_ids"], "index": item["index"]} for item in items])
            batch["teacher_input_ids"] = padded["input_ids"]
            batch["teacher_attention_mask"] = padded["attention_mask"]
        return batch


class PseudoLabelledDataModule(ClassificationDataModule):
    """`ClassificationDataModule` whose train split can be a teacher's pseudo-labelled corpus.

    Args:
        pseudo_label_path: a file written by ``python -m finlight pseudo-label``. Its rows replace the train
            split (hard label = the teacher's, soft targets = its logits); texts that also occur in the
            labelled val/test splits are dropped and counted, so the test stays unseen. ``null``: train on
            the labelled train split (stage 2).
        **kwargs: everything `ClassificationDataModule` takes (the labelled source, label_names, batches …).
    """

    def __init__(self, pseudo_label_path: Optional[str] = None,
                 pseudo_label_balance: Union[None, Literal["labelled"], list[float]] = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pseudo_label_balance, str) and pseudo_label_balance != "labelled":
            raise FinlightError(f"data.pseudo_label_balance={pseudo_label_balance!r}: use labelled, one share per "
                                f"label, or null")
        self.pseudo_label_path = pseudo_label_path
        self.pseudo_label_balance = pseudo_label_balance
        self.teacher_logits: dict[str, torch.Tensor] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        if not self.pseudo_label_path:
            return
        pseudo = read_pseudo_labels(self.pseudo_label_path, self.label_names)
        held_out = {r.text for name in ("val", "test") for r in self.splits[name]}
        keep = [i for i, t in enumerate(pseudo.texts) if t not in held_out]
        dropped_held_out = len(pseudo.texts) - len(keep)
        if dropped_held_out:
            log.warning("data: dropped %d pseudo-labelled texts that are in the labelled val/test splits",
                        dropped_held_out)
        balance = None
        if self.pseudo_label_balance is not None:
            keep, balance = self._balance(keep, [pseudo.labels[i] for i in keep])
        self.splits["train"] = [Record(pseudo.texts[i], self.label_names[pseudo.labels[i]], pseudo.origins[i])
                                for i in keep]
        self.labels["train"] = [pseudo.labels[i] for i in keep]
        self.teacher_logits["train"] = pseudo.logits[keep]
        self.class_weights = self._class_weights()
        self.report.update(self._summary())
        self.report["pseudo_labels"] = {"path": self.pseudo_label_path, "teacher": pseudo.teacher,
                                        "rows": len(pseudo.texts), "dropped_in_val_or_test": dropped_held_out,
                                        "used": len(keep), "balance": balance}
        log.info("data train  %5d pseudo-labelled examples from %s (teacher %s) %s", len(keep),
                 self.pseudo_label_path, pseudo.teacher, self.report["label_counts"]["train"])
        self._write_report()

    def _balance(self, keep: list[int], labels: list[int]) -> tuple[list[int], dict]:
        """``keep`` subsampled to ``pseudo_label_balance``; and what it did, for ``data_report.json``."""
        option, k = self.pseudo_label_balance, len(self.label_names)
        if option == "labelled":
            counts = Counter(self.labels["train"])
            shares = [counts[c] / max(sum(counts.values()), 1) for c in range(k)]
        else:
            shares = [float(v) for v in option]
            if len(shares) != k:
                raise FinlightError(f"data.pseudo_label_balance has {len(shares)} shares for {k} labels "
                                    f"{self.label_names}")
        chosen = balanced_subsample(labels, shares, self.hp.seed)
        before, after = Counter(labels), Counter(labels[i] for i in chosen)
        name = self.label_names
        info = {"option": option, "shares": dict(zip(name, [round(s / sum(shares), 4) for s in shares])),
                "before": {name[c]: before[c] for c in range(k)}, "after": {name[c]: after[c] for c in range(k)}}
        log.info("data: pseudo_label_balance=%s: %d → %d rows %s", option, len(labels), len(chosen), info["after"])
        return [keep[i] for i in chosen], info

    # ------------------------------------------------------------------ batches
    @property
    def teacher_tokenizer(self):
        """The online teacher's tokenizer when it differs from the student's (the model decides), else None."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(module, "teacher_tokenizer", None)

    def dataset(self, split: str) -> EncodedDataset:
        base = super().dataset(split)
        teacher_tokenizer = self.teacher_tokenizer
        key = f"distill:{split}"
        cached = self._encoded.get(key)
        if cached is not None and cached[0] == (id(base), id(teacher_tokenizer)):
            return cached[1]
        teacher_ids = None
        if teacher_tokenizer is not None:
            texts = self.predict_texts if split == "predict" else [r.text for r in self.splits[split]]
            teacher_ids, truncated = encode_texts(teacher_tokenizer, texts, self.hp.max_length)
            if truncated:
                log.warning("data %s: %d texts truncated for the teacher's tokenizer", split, truncated)
        dataset = DistillationDataset(base.input_ids, base.labels, self.teacher_logits.get(split), teacher_ids)
        self._encoded[key] = ((id(base), id(teacher_tokenizer)), dataset)
        return dataset

    def _loader(self, split: str) -> DataLoader:
        loader = super()._loader(split)
        teacher_tokenizer = self.teacher_tokenizer
        loader.collate_fn = DistillationCollator(
            loader.collate_fn, teacher_tokenizer.pad_token_id if teacher_tokenizer is not None else None)
        return loader
