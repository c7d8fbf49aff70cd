"""`OptimizerRestart`: rebuild the optimizer and LR schedule after given epochs (a warm restart).

Why: a PerforatedAI dendrite switch rebuilds AdamW and the schedule (`finlight.dendrites.tracker`), so a dendritic
run gets a warm restart its plain twin lacks; this callback gives the plain run the same restart at the same point,
the control that separates "dendrites helped" from "the restart helped". It does exactly what the tracker does:
``trainer.strategy.setup_optimizers(trainer)`` in ``on_train_epoch_end`` (after validation and after the epoch's
checkpoints), i.e. ``configure_optimizers`` again: fresh AdamW moments and the schedule from step 0 (warm-up, then
decay over the run's total steps). Lightning has no public hook that does this (``BaseFinetuning`` only adds
parameter groups). A resumed run stays exact: the checkpoint of a restart epoch precedes the restart, and Lightning
finishes that epoch on resume, which runs this hook again.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl

from finlight.errors import FinlightError

log = logging.getLogger("finlight.optimizer_restart")


class OptimizerRestart(pl.Callback):
    """Rebuild optimizer + scheduler at the end of each epoch in ``after_epochs`` (0-based, as Lightning counts)."""

    def __init__(self, after_epochs: list[int]):
        if not after_epochs or any(not isinstance(e, int) or e < 0 for e in after_epochs):
            raise FinlightError(f"OptimizerRestart.after_epochs must be non-negative epoch numbers, "
                                f"got {after_epochs!r}")
        self.after_epochs = sorted(set(after_epochs))
        self.restarts: list[int] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        last = trainer.max_epochs - 1 if trainer.max_epochs not in (None, -1) else None
        if last is not None and any(e >= last for e in self.after_epochs):
            raise FinlightError(f"OptimizerRestart.after_epochs {self.after_epochs}: a restart after epoch {last} or "
                                f"later has no epoch left to train (trainer.max_epochs is {trainer.max_epochs})")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.after_epochs or epoch in self.restarts:
            return
        trainer.strategy.setup_optimizers(trainer)
        self.restarts.append(epoch)
        log.info("optimizer restart after epoch %d: fresh %s and LR schedule", epoch,
                 type(trainer.optimizers[0]).__name__)

    def state_dict(self) -> dict:
        return {"restarts": list(self.restarts)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restarts = list(state_dict.get("restarts", []))
