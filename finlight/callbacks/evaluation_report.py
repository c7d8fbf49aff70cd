"""Confusion matrices as images (TensorBoard + PNG) and a ``test_metrics.json`` in the run folder."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from finlight.plots import confusion_matrix_figure


class EvaluationReport(pl.Callback):
    """Reads what the module computed at the end of each evaluation (``pl_module.confusion[stage]``)."""

    def __init__(self, write_png: bool = True):
        self.write_png = write_png

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._images(trainer, pl_module, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._images(trainer, pl_module, "test")
        if not trainer.is_global_zero or trainer.log_dir is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        confusion = pl_module.confusion.get("test")
        report = {
            "checkpoint": trainer.ckpt_path,
            "label_names": pl_module.label_names,
            "metrics": dict(sorted(metrics.items())),
            "confusion_matrix": confusion.tolist() if confusion is not None else None,
        }
        os.makedirs(trainer.log_dir, exist_ok=True)
        with open(os.path.join(trainer.log_dir, "test_metrics.json"), "w") as handle:
            json.dump(report, handle, indent=2)

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
            if self.write_png and stage == "test" and trainer.log_dir is not None:
                figure.savefig(os.path.join(trainer.log_dir, f"test_confusion_{kind}.png"), dpi=120)
            import matplotlib.pyplot as plt

            plt.close(figure)
