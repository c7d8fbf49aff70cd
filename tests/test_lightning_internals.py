"""The Lightning internals finlight still relies on, where no public hook exists (each use says why in a comment):
these tests fail loudly, naming the internal, when a Lightning upgrade changes one. Plus the public replacements
(the logger's own ``version`` on resume, a separate event file for the HParams session)."""

import inspect
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from finlight.core.callbacks.checkpoint import RunCheckpoint


class LoggingBoring(BoringModel):
    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)["x"]
        self.log("val/m", -loss)
        return loss


def _fit(tmp_path, callbacks, epochs=3):
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=2, limit_val_batches=2,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(LoggingBoring())
    return trainer


@pytest.mark.parametrize("name, params", [
    ("_save_checkpoint", ["self", "trainer", "filepath"]),
    ("_should_save_on_train_epoch_end", ["self", "trainer"]),
    ("_should_skip_saving_checkpoint", ["self", "trainer"]),
    ("_monitor_candidates", ["self", "trainer"]),
    ("_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
])
def test_model_checkpoint_internals_that_run_checkpoint_overrides_or_calls_are_unchanged(name, params):
    method = getattr(ModelCheckpoint, name, None)
    assert method is not None, f"Lightning's ModelCheckpoint lost {name}: update finlight.core.callbacks.checkpoint"
    assert list(inspect.signature(method).parameters) == params, \
        f"ModelCheckpoint.{name} changed its signature: update finlight.core.callbacks.checkpoint"


def test_cli_instantiate_trainer_internal_that_finlight_overrides_is_unchanged():
    from lightning.pytorch.cli import LightningCLI

    method = getattr(LightningCLI, "_instantiate_trainer", None)
    assert method is not None, "LightningCLI lost _instantiate_trainer: update finlight.cli.FinlightCLI"
    assert list(inspect.signature(method).parameters) == ["self", "config", "callbacks"], \
        "LightningCLI._instantiate_trainer changed its signature: update finlight.cli.FinlightCLI"


def test_run_checkpoint_writes_weights_only_best_files_and_last_every_epoch(tmp_path):
    callback = RunCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/m", mode="min", save_last=True)
    _fit(tmp_path, [callback])
    best = torch.load(callback.best_model_path, weights_only=True)
    last = torch.load(callback.last_model_path, weights_only=True)
    assert "optimizer_states" not in best and "optimizer_states" in last  # through _save_checkpoint
    assert last["epoch"] == 2  # written after every epoch, also after the best one (mode min: the first epochs)


def test_an_in_place_update_of_callback_metrics_in_on_validation_end_reaches_model_checkpoint(tmp_path):
    """What SuccessiveLayerDrop's revert relies on (``trainer.callback_metrics.update`` in on_validation_end):
    the checkpoint callback, which Lightning runs after the others, ranks by the updated value."""

    class Overwrite(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                trainer.callback_metrics.update({"val/m": torch.tensor(100.0 + trainer.current_epoch)})

    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/m", mode="max")
    _fit(tmp_path, [checkpoint, Overwrite()])  # listed first: Lightning still runs checkpoint callbacks last
    assert float(checkpoint.best_model_score) == 102.0, \
        "ModelCheckpoint no longer sees trainer.callback_metrics updated in on_validation_end: update " \
        "finlight.prune.layer_drop.SuccessiveLayerDrop._revert"


def test_hparams_session_goes_to_its_own_event_file_in_the_run_folder(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finlight.core.callbacks.hparams import HParamsSummary

    logger = TensorBoardLogger(str(tmp_path), name="run", version="version_0", default_hp_metric=False)
    logger.log_metrics({"val/macro_f1": 0.5}, step=1)
    callback = HParamsSummary()
    callback.set_config({"seed_everything": 3, "model": {"class_path": "finlight.core.SequenceClassifier",
                                                         "init_args": {"learning_rate": 0.01}}})
    callback.on_fit_start(SimpleNamespace(loggers=[logger], global_rank=0), None)
    logger.experiment.flush()
    files = sorted(p.name for p in (tmp_path / "run" / "version_0").iterdir())
    assert len(files) == 2 and sum(name.endswith(".hparams") for name in files) == 1, files
    events = EventAccumulator(str(tmp_path / "run" / "version_0")).Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))
    assert [e.value for e in events.Scalars("val/macro_f1")] == [0.5]  # no made-up metric values beside


def test_lightning_cli_still_calls_parse_ckpt_path_after_parsing_and_before_instantiating():
    """finlight.cli.FinlightCLI overrides it so a checkpoint's hparams never override the config."""
    from lightning.pytorch.cli import LightningCLI

    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    source = inspect.getsource(LightningCLI.__init__)
    calls = [source.find(name) for name in ("self.parse_arguments(", "self._parse_ckpt_path()",
                                            "self.before_instantiate_classes()")]
    assert -1 not in calls and calls == sorted(calls), \
        "LightningCLI.__init__ no longer calls _parse_ckpt_path between parsing and instantiation: update finlight.cli"
