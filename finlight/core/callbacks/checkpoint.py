"""ModelCheckpoint that files checkpoints beside the run's logs: ``checkpoints/<experiment>/version_N/``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint

from finlight.errors import FinlightError


class RunCheckpoint(ModelCheckpoint):
    """Best and last checkpoints on ``val/macro_f1`` (the defaults come from the CLI), under
    ``<root>/<logger name>/version_<logger version>`` so each run's checkpoints match its log folder; without a
    ``filename`` each file is named after the monitored metric (``epoch03-val_exec_acc0.5000.ckpt``).
    ``last.ckpt`` is the newest state after every epoch (what ``--ckpt_path last`` resumes from).

    ``best_weights_only`` (default): the ranked (best top-k) files hold what evaluation needs — the weights and
    the module's own entries (label names, backbone config, tokenizer) — not the optimizer and callback states
    that only resuming needs; ``last.ckpt`` keeps the full resumable state. For AdamW that makes a best file
    about a third of a full one. Files are written in the background (``BackgroundCheckpointIO``, the CLI's
    default); each finished write is logged (file, size, seconds) on the console and as
    ``checkpoint/{best,last}_{mb,write_s}`` metrics."""

    def __init__(self, root: str = "checkpoints", best_weights_only: bool = True, **kwargs):
        monitor = kwargs.get("monitor")
        if kwargs.get("filename") is None and monitor:  # name files after the metric that ranks them
            kwargs["filename"] = f"epoch{{epoch:02d}}-{monitor.replace('/', '_')}{{{monitor}:.4f}}"
            kwargs.setdefault("auto_insert_metric_name", False)
        if best_weights_only and kwargs.get("save_last") == "link":
            raise FinlightError("checkpoint.save_last=link would make last.ckpt a link to a weights-only best file "
                                "(not resumable); use save_last: true, or checkpoint.best_weights_only: false")
        super().__init__(**kwargs)
        self.root = root
        self.best_weights_only = best_weights_only

    # Lightning internals (no public hook does this; tests/test_lightning_internals.py fails loudly when one of
    # them changes): ``_save_checkpoint(trainer, filepath)`` is the one place a file's path and its
    # ``save_weights_only`` meet, so ranked and last files can differ; ``_should_save_on_train_epoch_end``,
    # ``_should_skip_saving_checkpoint``, ``_monitor_candidates`` and ``_save_last_checkpoint`` are what
    # ModelCheckpoint's own hooks use to write last.ckpt, reused so the extra write follows the same rules.
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Ranked files weights-only (``best_weights_only``), ``last.ckpt`` in full."""
        full = filepath == self.last_model_path or not self.best_weights_only
        configured = self.save_weights_only
        self.save_weights_only = configured or not full
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.save_weights_only = configured
        self._log_finished_writes(trainer)

    def _log_finished_writes(self, trainer) -> None:
        """Size and write time of each file the checkpoint IO has finished (it writes in the background, so
        these are the earlier saves'), as metrics at the step each was saved at; the IO logs them on the console."""
        take = getattr(trainer.strategy.checkpoint_io, "take_written", None)
        if take is None or not trainer.is_global_zero:
            return
        for record in take():
            kind = "last" if os.path.basename(record["path"]) == os.path.basename(self.last_model_path or "last.ckpt") \
                else "best"
            step = record["step"] if record["step"] is not None else trainer.global_step
            for logger in trainer.loggers:
                logger.log_metrics({f"checkpoint/{kind}_mb": record["mb"], f"checkpoint/{kind}_write_s": record["seconds"]},
                                   step=step)

    def on_fit_end(self, trainer, pl_module) -> None:
        # the strategy's teardown has waited for the background writes; the loggers are still open
        self._log_finished_writes(trainer)

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
