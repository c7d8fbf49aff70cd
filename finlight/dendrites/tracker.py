"""Feeds the validation score to perforatedai's tracker and applies what it decides.

perforatedai's loop is ``model, restructured, complete = GPA.pai_tracker.add_validation_score(score, model)``
once per epoch. In Lightning that means: the module's backbone may be replaced by another object (it reloads
its best model and adds dendrites), the optimizer and scheduler must be rebuilt over the parameters that now
train (at each switch it freezes or unfreezes whole groups), the new modules must train, and ``complete``
ends the run.

The tracker runs in ``on_train_epoch_end``, after validation, and the run's ModelCheckpoints are set to save
in ``on_validation_end`` (by default they save in ``on_train_epoch_end``, after every other callback): so a
checkpoint holds exactly the model that earned its score, never the restructured one. ``callback_metrics``
holds this epoch's validation score there (in ``on_validation_epoch_end`` it is still last epoch's). A
checkpoint therefore precedes the tracker's step for its epoch; it records that score, and on a resume, when
Lightning finishes that epoch (without validating again), the score is fed from the checkpoint, with the random
number state saved beside it (the switch initialises dendrites from it). The sanity check never reaches the tracker.
"""

from __future__ import annotations

import logging
from typing import Optional

import lightning.pytorch as pl

from finlight.core.callbacks.rng_state import RNGState
from finlight.dendrites.perforate import dendrite_count, import_pai, pai_guard, trainable_parameters
from finlight.errors import FinlightError

log = logging.getLogger("finlight.dendrites.perforate")


def optimizer_parameter_ids(trainer) -> set[int]:
    return {id(p) for optimizer in trainer.optimizers for group in optimizer.param_groups for p in group["params"]}


class PAITracker(pl.Callback):
    """Drive perforatedai's dendrite tracker from a Lightning fit.

    Args:
        monitor: the validation metric the tracker maximises (``val/macro_f1``).

    Logs per epoch, to every logger: ``dendrites/count``, ``dendrites/trainable_params``,
    ``dendrites/total_params`` and ``dendrites/switch`` (1 in an epoch where the model was restructured).
    ``switch_epochs`` lists those epochs.
    """

    def __init__(self, monitor: str = "val/macro_f1"):
        self.monitor = monitor
        self.switch_epochs: list[int] = []
        self.complete = False
        self._trainer = None
        self._fed_epoch = -1
        self._resumed: Optional[dict] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not hasattr(pl_module, "pai_folder"):
            raise FinlightError("PAITracker needs a finlight.dendrites.DendriticClassifier with model.dendrites set")
        self._trainer = trainer
        for checkpoint in trainer.checkpoint_callbacks:
            # With validation every epoch, ModelCheckpoint saves in on_train_epoch_end, after this callback
            # (Lightning runs monitoring callbacks last): the file would hold the restructured model under the
            # score of the one before. Saving after validation keeps model and score together.
            # Why the private attribute: the public switch is ModelCheckpoint's constructor argument
            # save_on_train_epoch_end, but the CLI builds its checkpoint callback before it knows the model, and a
            # model cannot reach it: configure_callbacks may only *replace* a callback (dropping the CLI's dirpath,
            # filename and monitor), and Lightning always moves checkpoint callbacks after this one. Setting
            # `checkpoint.save_on_train_epoch_end: false` in a config does the same publicly, but would make a
            # dendritic config differ from its baseline in more than the dendrites. Checked against Lightning 2.6.
            if not hasattr(checkpoint, "_save_on_train_epoch_end"):
                raise FinlightError(f"PAITracker: this Lightning version's {type(checkpoint).__name__} has no "
                                    "_save_on_train_epoch_end; set checkpoint.save_on_train_epoch_end: false")
            checkpoint._save_on_train_epoch_end = False

    def on_train_start(self, trainer, pl_module) -> None:
        GPA, _, _ = import_pai()
        GPA.pai_tracker.set_optimizer_instance(trainer.optimizers[0])  # it reads the learning rate each epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.complete:
            return
        resumed, self._resumed = self._resumed, None
        if self.monitor in trainer.callback_metrics:
            score = float(trainer.callback_metrics[self.monitor])
        elif resumed and resumed.get("pending_epoch") == trainer.current_epoch:
            # resumed from a checkpoint written after this epoch's validation: Lightning finishes the epoch
            # without validating again, so the score comes from the checkpoint. Restarting the loop drew random
            # numbers since the checkpoint's generators were restored (a sampler seed for the finished epoch);
            # the switch initialises dendrites from them, so they are put back to the checkpoint's state first.
            score = resumed["pending_score"]
            if resumed.get("pending_rng") is not None:
                RNGState().load_state_dict(resumed["pending_rng"])
        else:
            raise FinlightError(f"PAITracker: metric {self.monitor!r} was not logged this epoch (logged: "
                                f"{sorted(trainer.callback_metrics)[:8]}); set model.monitor")
        self.feed(trainer, pl_module, score, trainer.current_epoch)

    def feed(self, trainer, pl_module, score: float, epoch: int) -> None:
        """One ``add_validation_score`` call and everything it asks for."""
        GPA, _, _ = import_pai()
        with pai_guard(pl_module.pai_folder, trainer):
            model, restructured, complete = GPA.pai_tracker.add_validation_score(score, pl_module.model)
        self._fed_epoch = epoch
        switched = bool(restructured)
        if switched:
            self.apply_restructure(trainer, pl_module, model)
            self.switch_epochs.append(epoch)
            log.info("dendrites: restructured after epoch %d (%d dendrite sets, %d trainable parameters)",
                     epoch, dendrite_count(), trainable_parameters(pl_module.model))
        self.log_state(trainer, pl_module, switched)
        if complete:
            self.complete = True
            trainer.should_stop = True
            log.info("dendrites: the tracker says training is complete after epoch %d", epoch)

    @staticmethod
    def apply_restructure(trainer, pl_module, model) -> None:
        """Install the tracker's model, train mode on, optimizer + scheduler rebuilt over what now trains."""
        GPA, _, _ = import_pai()
        pl_module.model = model.to(pl_module.device)
        pl_module.model.train()
        trainer.strategy.setup_optimizers(trainer)
        GPA.pai_tracker.set_optimizer_instance(trainer.optimizers[0])
        trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}
        in_optimizer = optimizer_parameter_ids(trainer)
        if trainable != in_optimizer:  # a bug, not a user mistake: fail loudly rather than train the wrong set
            raise RuntimeError(f"after a dendrite switch the optimizer holds {len(in_optimizer)} tensors but "
                               f"{len(trainable)} train")

    @staticmethod
    def log_state(trainer, pl_module, switched: bool) -> None:
        metrics = {"dendrites/count": float(dendrite_count()),
                   "dendrites/trainable_params": float(trainable_parameters(pl_module.model)),
                   "dendrites/total_params": float(sum(p.numel() for p in pl_module.model.parameters())),
                   "dendrites/switch": float(switched)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict:
        """The tracker's own state, and the score of this epoch when it was not fed yet: ModelCheckpoint saves
        in ``on_validation_end``, before ``on_train_epoch_end`` feeds the tracker, so a resume replays it."""
        GPA, _, _ = import_pai()
        state = {"switch_epochs": list(self.switch_epochs), "complete": self.complete,
                 "tracker": GPA.pai_tracker.to_string() if GPA.pai_tracker else None,
                 "pending_score": None, "pending_epoch": None}
        trainer = self._trainer
        if (trainer is not None and trainer.state.fn == "fit" and not trainer.sanity_checking
                and self._fed_epoch != trainer.current_epoch and self.monitor in trainer.callback_metrics):
            state.update(pending_score=float(trainer.callback_metrics[self.monitor]),
                         pending_epoch=trainer.current_epoch, pending_rng=RNGState().state_dict())
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Runs after the module rebuilt its dendrites (and perforatedai's tracker) from the checkpoint."""
        self.switch_epochs = list(state_dict.get("switch_epochs", []))
        self.complete = bool(state_dict.get("complete", False))
        GPA, _, _ = import_pai()
        if state_dict.get("tracker") and GPA.pai_tracker:
            with pai_guard():
                GPA.pai_tracker.from_string(state_dict["tracker"])
        self._resumed = state_dict
