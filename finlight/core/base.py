"""What every finlight classifier module shares: per-stage metrics at epoch end, the best validation
macro-F1 of a fit, and AdamW with the configured schedule."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from finlight.core.metrics import flatten_metrics
from finlight.core.optim import adamw_with_schedule, clip_gradients, fused_allowed


class ClassificationModule(pl.LightningModule):
    """Subclasses set ``self.model``, ``self.label_names``, ``{val,test}_metrics`` (a `classification_metrics`
    collection), ``val_macro_f1_best`` (a ``MaxMetric``) and ``self.confusion`` (a dict), and have hparams
    ``learning_rate``, ``weight_decay``, ``scheduler``, ``warmup_ratio`` (``step_size``/``gamma`` for StepLR)."""

    def _epoch_values(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's metric values for the epoch (synchronised across ranks), then reset."""
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        return values

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        values = self._epoch_values(stage)
        self.confusion[stage] = values["confusion"].cpu()
        flat = flatten_metrics(values, self.label_names, stage)
        headline = {f"{stage}/acc", f"{stage}/macro_f1"}
        self.log_dict({k: v for k, v in flat.items() if k in headline}, prog_bar=True)
        self.log_dict({k: v for k, v in flat.items() if k not in headline})
        return flat

    def on_train_start(self) -> None:
        self.val_macro_f1_best.reset()  # forget the sanity check

    def on_validation_epoch_end(self) -> None:
        flat = self._log_epoch_metrics("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.val_macro_f1_best.update(flat["val/macro_f1"])
            self.log("val/macro_f1_best", self.val_macro_f1_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self):
        return adamw_with_schedule(self.model, self.hparams, lambda: int(self.trainer.estimated_stepping_batches),
                                   fused=fused_allowed(self._trainer))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
