"""Per-example class probabilities of an evaluation set, for callbacks that need more than the aggregate metrics
(per-example test predictions, threshold sweeps).

Two ways, both without touching the module's code:

* `ForwardCapture` listens to the module's ``forward`` during the test loop (a forward hook) and pairs each
  batch's logits with its ``index`` and ``labels``: no second pass over the data.
* `predict_split` runs the module over a data loader itself (validation predictions at test time).

Both need a module whose ``forward(input_ids, attention_mask)`` returns class logits ``[batch, num_labels]``
(finlight's `SequenceClassifier` and its subclasses). Other modules are detected and reported, never guessed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

log = logging.getLogger("finlight.callbacks")


@dataclass
class SplitPredictions:
    """Rows sorted by ``index`` (the example's position in its split)."""

    index: np.ndarray          # [n] int
    labels: Optional[np.ndarray]  # [n] int, or None for unlabelled data
    probs: np.ndarray          # [n, k] float

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @classmethod
    def from_parts(cls, parts: list[tuple]) -> "SplitPredictions":
        index = np.concatenate([p[0] for p in parts]).astype(int)
        labels = None if any(p[1] is None for p in parts) else np.concatenate([p[1] for p in parts]).astype(int)
        probs = np.concatenate([p[2] for p in parts]).astype(np.float64)
        # under DDP a padded sampler repeats examples: keep the first copy of each index
        index, first = np.unique(index, return_index=True)
        return cls(index, None if labels is None else labels[first], probs[first])


def class_logits(output, num_labels: int) -> Optional[torch.Tensor]:
    """``[batch, num_labels]`` logits from what a forward returned, or None when it is something else."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[-1] == num_labels:
        return logits
    return None


def _part(batch: dict, logits: torch.Tensor) -> tuple:
    labels = batch.get("labels")
    return (batch["index"].detach().cpu().numpy(),
            None if labels is None else labels.detach().cpu().numpy(),
            logits.detach().float().softmax(-1).cpu().numpy())


class ForwardCapture:
    """Collects the test loop's per-example probabilities from the module's forward calls.

    ``attach`` at test-epoch start, ``batch_end`` from ``on_test_batch_end``, ``result`` at the end (gathers
    the shards of all ranks under DDP), ``detach`` always.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self.handle = None
        self.pending = None
        self.parts: list[tuple] = []
        self.unusable: Optional[str] = None

    def attach(self, pl_module) -> None:
        self.detach()
        self.parts, self.pending, self.unusable = [], None, None
        self.handle = pl_module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.pending = output

    def batch_end(self, pl_module, batch) -> None:
        if self.unusable is not None or self.handle is None:
            return
        output, self.pending = self.pending, None
        k = len(pl_module.label_names or [])
        logits = class_logits(output, k) if output is not None else None
        if logits is None or not isinstance(batch, dict) or "index" not in batch:
            self.unusable = (f"{type(pl_module).__name__}'s test_step gives no per-example class logits "
                             f"through forward(); {self.owner} has no per-example test predictions")
            log.warning(self.unusable)
            return
        self.parts.append(_part(batch, logits))

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def result(self, trainer) -> Optional[SplitPredictions]:
        parts = self.parts
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (self.unusable, parts))
            if any(u is not None for u, _ in gathered):
                return None
            parts = [p for _, rank_parts in gathered for p in rank_parts]
        if self.unusable is not None or not parts:
            return None
        return SplitPredictions.from_parts(parts)


@torch.no_grad()
def predict_split(trainer, pl_module, dataloader) -> SplitPredictions:
    """The module's probabilities over a whole loader (eval mode, the trainer's precision, no gradients)."""
    was_training = pl_module.training
    pl_module.eval()
    parts = []
    k = len(pl_module.label_names)
    try:
        for batch in dataloader:
            batch = {key: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
            with trainer.precision_plugin.forward_context():
                output = pl_module(batch["input_ids"], batch["attention_mask"])
            logits = class_logits(output, k)
            if logits is None:
                from finlight.errors import FinlightError

                raise FinlightError(f"{type(pl_module).__name__}.forward(input_ids, attention_mask) does not return "
                                    f"[batch, {k}] class logits; this callback works with SequenceClassifier models")
            parts.append(_part(batch, logits))
    finally:
        pl_module.train(was_training)
    return SplitPredictions.from_parts(parts)


def write_split_predictions(path: str, predictions: SplitPredictions, label_names: list[str],
                            texts: Optional[list[str]] = None) -> None:
    """``index, text, label, predicted, prob_<label>…`` one row per example, in split order; names, not ids."""
    import csv

    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index"] + (["text"] if texts else []) + ["label", "predicted"]
                        + [f"prob_{n}" for n in label_names])
        for row, i in enumerate(predictions.index):
            label = "" if predictions.labels is None else label_names[predictions.labels[row]]
            writer.writerow([int(i)] + ([texts[i]] if texts else []) + [label, label_names[predictions.predicted[row]]]
                            + [f"{p:.6f}" for p in predictions.probs[row]])


def read_split_predictions(path: str) -> tuple[SplitPredictions, list[str], Optional[list[str]]]:
    """Inverse of `write_split_predictions`: predictions, label names, texts (None when not written)."""
    import csv

    from finlight.errors import FinlightError

    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise FinlightError(f"{path}: no predictions in it")
    names = [c[len("prob_"):] for c in rows[0] if c.startswith("prob_")]
    if not names or "label" not in rows[0] or "index" not in rows[0]:
        raise FinlightError(f"{path}: not a finlight predictions file (needs index, label, prob_<label> columns)")
    position = {n: i for i, n in enumerate(names)}
    try:
        labels = np.array([position[r["label"]] for r in rows]) if all(r["label"] for r in rows) else None
    except KeyError as err:
        raise FinlightError(f"{path}: label {err.args[0]!r} is not among its prob_ columns {names}") from None
    predictions = SplitPredictions(np.array([int(r["index"]) for r in rows]), labels,
                                   np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows]))
    texts = [r["text"] for r in rows] if "text" in rows[0] else None
    return predictions, names, texts
