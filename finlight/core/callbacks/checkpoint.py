"""ModelCheckpoint that files checkpoints beside the run's logs: ``checkpoints/<experiment>/version_N/``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Best and last checkpoints on ``val/macro_f1`` (the defaults come from the CLI), under
    ``<root>/<logger name>/version_<logger version>`` so each run's checkpoints match its log folder; without a
    ``filename`` each file is named after the monitored metric (``epoch03-val_exec_acc0.5000.ckpt``).
    ``last.ckpt`` is the newest state after every epoch (what ``--ckpt_path last`` resumes from)."""

    def __init__(self, root: str = "checkpoints", **kwargs):
        monitor = kwargs.get("monitor")
        if kwargs.get("filename") is None and monitor:  # name files after the metric that ranks them
            kwargs["filename"] = f"epoch{{epoch:02d}}-{monitor.replace('/', '_')}{{{monitor}:.4f}}"
            kwargs.setdefault("auto_insert_metric_name", False)
        super().__init__(**kwargs)
        self.root = root

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None and trainer.logger is not None and trainer.logger.version is not None:
            version = trainer.logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            self.dirpath = os.path.join(self.root, trainer.logger.name or "default", version)
        super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_time(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_time(trainer)

    def _save_last_every_time(self, trainer) -> None:
        """Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint was written at the same step, so
        after the best epoch it stops moving. Resuming needs the newest state: write it after every epoch."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
