"""Confusion matrices as images (TensorBoard + PNG), a ``test_metrics.json`` and a ``test_predictions.csv``
(one row per test example: what the paired tests of ``finlight report`` compare) in the run folder."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from finlight.core.callbacks.collect import ForwardCapture, write_split_predictions
from finlight.core.plots import confusion_matrix_figure
from finlight.core.run_dir import run_dir


class EvaluationReport(pl.Callback):
    """Reads what the module computed at the end of each evaluation (``pl_module.confusion[stage]``)."""

    def __init__(self, write_png: bool = True, write_predictions: bool = True):
        self.write_png = write_png
        self.write_predictions = write_predictions
        self._capture = ForwardCapture("EvaluationReport")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self.write_predictions:
            self._capture.attach(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture.batch_end(pl_module, batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._images(trainer, pl_module, "val")
        if trainer.state.fn == "validate" and trainer.is_global_zero and run_dir(trainer) is not None:
            _write_json(os.path.join(run_dir(trainer), "val_metrics.json"), _metrics_report(trainer, pl_module, "val"))

    def on_test_end(self, trainer, pl_module) -> None:
        self._images(trainer, pl_module, "test")
        predictions = self._capture.result(trainer) if self.write_predictions else None  # all ranks gather
        self._capture.detach()
        if not trainer.is_global_zero or run_dir(trainer) is None:
            return
        _write_json(os.path.join(run_dir(trainer), "test_metrics.json"), _metrics_report(trainer, pl_module, "test"))
        if predictions is not None:
            write_split_predictions(os.path.join(run_dir(trainer), "test_predictions.csv"), predictions,
                                    pl_module.label_names, _split_texts(trainer, "test"))

    def _images(self, trainer, pl_module, stage: str) -> None:
        confusion = pl_module.confusion.get(stage)
        if confusion is None or not trainer.is_global_zero:
            return
        raw = confusion.numpy().astype(float)
        normalized = raw / np.clip(raw.sum(axis=1, keepdims=True), 1, None)
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        for kind, matrix in (("raw", raw), ("normalized", normalized)):
            title = f"{stage} confusion ({kind}), epoch {trainer.current_epoch}"
            figure = confusion_matrix_figure(matrix, pl_module.label_names, title, kind == "normalized")
            if tensorboard is not None:
                tensorboard.experiment.add_figure(f"{stage}/confusion_{kind}", figure, trainer.global_step,
                                                  close=False)
            if self.write_png and stage == "test" and run_dir(trainer) is not None:
                figure.savefig(os.path.join(run_dir(trainer), f"test_confusion_{kind}.png"), dpi=120)
            import matplotlib.pyplot as plt

            plt.close(figure)


def _split_texts(trainer, split: str):
    splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
    records = splits.get(split)
    return [r.text for r in records] if records else None


def _metrics_report(trainer, pl_module, stage: str) -> dict:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
    confusion = pl_module.confusion.get(stage)
    return {
        "checkpoint": trainer.ckpt_path,
        "label_names": pl_module.label_names,
        "metrics": dict(sorted(metrics.items())),
        "confusion_matrix": confusion.tolist() if confusion is not None else None,
    }


def _write_json(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
