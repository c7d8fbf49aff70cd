"""Writes ``predict`` output: one row per input, in input order, with label names and probabilities."""

from __future__ import annotations

import csv
import json
import os
from typing import Literal, Optional

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from finlight.core.callbacks.threshold_sweep import DecisionPolicy
from finlight.errors import FinlightError
from finlight.core.run_dir import run_dir


class PredictionWriter(BasePredictionWriter):
    """``predictions.csv`` (or ``.jsonl``) in the run folder: text, predicted label, ``prob_<label>`` per class.

    Batches arrive sorted by length; every row carries its input position, so the file follows the input.
    ``decisions``: an optional `DecisionPolicy` (bands over one class's probability) adds a ``decision`` column.
    """

    def __init__(self, format: Literal["csv", "jsonl"] = "csv", filename: str = "predictions",
                 decisions: Optional[DecisionPolicy] = None):
        super().__init__(write_interval="epoch")
        if format not in ("csv", "jsonl"):
            raise FinlightError(f"predictions.format={format!r}: use csv or jsonl")
        self.format = format
        self.filename = filename
        self.decisions = decisions
        self.path = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if trainer.world_size > 1:  # DDP: every rank predicted a share (padded with repeats); rank 0 writes all
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()}
                                                         for b in batches])
            batches = _drop_repeats([b for share in shares for b in share])
        if not trainer.is_global_zero:
            return
        index = torch.cat([b["index"] for b in batches]).tolist()
        texts = trainer.datamodule.predict_texts
        names = pl_module.label_names
        rows = []
        if "rows" in batches[0]:  # modules that decide the label themselves (CausalLMClassifier: parsed answers)
            given = [row for b in batches for row in b["rows"]]
            rows = [{"text": texts[i], **row} for i, row in sorted(zip(index, given), key=lambda pair: pair[0])]
        else:
            for i, p in sorted(zip(index, torch.cat([b["probs"] for b in batches]).tolist())):
                best = max(range(len(p)), key=p.__getitem__)
                rows.append({"text": texts[i], "label": names[best],
                             **{f"prob_{n}": round(v, 6) for n, v in zip(names, p)}})
        if self.decisions is not None:
            column = f"prob_{names[self.decisions.positive_index(names)]}"
            if column not in rows[0]:
                raise FinlightError(f"predictions.decisions needs class probabilities ({column}); "
                                    f"{type(pl_module).__name__} gives labels only")
            for row, decision in zip(rows, self.decisions.decide([row[column] for row in rows])):
                row["decision"] = decision
        folder = run_dir(trainer) or "."
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{self.filename}.{self.format}")
        with open(self.path, "w", encoding="utf-8", newline="") as handle:
            if self.format == "csv":
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            else:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"finlight: wrote {len(rows)} predictions to {self.path}")


def _drop_repeats(batches: list[dict]) -> list[dict]:
    """DistributedSampler pads the last share with repeated inputs: keep the first row of each index."""
    seen: set[int] = set()
    kept = []
    for batch in batches:
        keep = [i for i, index in enumerate(batch["index"].tolist()) if not (index in seen or seen.add(index))]
        kept.append({k: (v[keep] if torch.is_tensor(v) else [v[i] for i in keep]) for k, v in batch.items()})
    return [b for b in kept if len(b["index"])]
