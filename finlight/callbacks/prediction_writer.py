"""Writes ``predict`` output: one row per input, in input order, with label names and probabilities."""

from __future__ import annotations

import csv
import json
import os
from typing import Literal

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from finlight.errors import FinlightError


class PredictionWriter(BasePredictionWriter):
    """``predictions.csv`` (or ``.jsonl``) in the run folder: text, predicted label, ``prob_<label>`` per class.

    Batches arrive sorted by length; every row carries its input position, so the file follows the input.
    """

    def __init__(self, format: Literal["csv", "jsonl"] = "csv", filename: str = "predictions"):
        super().__init__(write_interval="epoch")
        if format not in ("csv", "jsonl"):
            raise FinlightError(f"predictions.format={format!r}: use csv or jsonl")
        self.format = format
        self.filename = filename
        self.path = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not trainer.is_global_zero:
            return
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        index = torch.cat([b["index"] for b in batches]).tolist()
        probs = torch.cat([b["probs"] for b in batches]).tolist()
        texts = trainer.datamodule.predict_texts
        names = pl_module.label_names
        rows = []
        for i, p in sorted(zip(index, probs)):
            best = max(range(len(p)), key=p.__getitem__)
            rows.append({"text": texts[i], "label": names[best],
                         **{f"prob_{n}": round(v, 6) for n, v in zip(names, p)}})
        folder = trainer.log_dir or "."
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
