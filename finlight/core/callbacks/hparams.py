"""TensorBoard that compares runs: the HParams dashboard, and a test run's metrics beside its fit.

* At fit start the run's settings (learning rate, epochs, backbone, LoRA / quantization, dendrites, seed, …, taken
  from the resolved config) are written as an HParams session whose metrics are the validation and test
  scores below. TensorBoard reads a metric's value from the run's scalars with the same tag, so the table fills in
  as the run logs them. Lightning's own ``log_hyperparams`` cannot do this without also writing placeholder
  values into those scalars at step 0, so the summary is written directly (torch's ``hparams`` summary).
* ``test --ckpt_path checkpoints/E/version_N/…`` logs into a new ``logs/E/version_M/``; its test scalars are also
  written into the fit's ``logs/E/version_N/`` (an extra event file), so the fit's row in the HParams table and
  its scalar charts show the test metrics of its own checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl

log = logging.getLogger("finlight.callbacks")

METRICS = ("val/macro_f1_best", "val/macro_f1", "val/acc", "val/loss", "test/acc", "test/macro_f1",
           "test/weighted_f1", "test/loss")


def flat_hparams(config: dict, prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested config as ``a.b.c`` keys (lists and mappings of values as text); ``class_path``
    becomes the key of its section (``model``: ``SequenceClassifier``) and ``init_args`` is dropped from keys."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("config", "trainer.callbacks", "callbacks", "logger", "plugins", "__path__"):
            continue
        name = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else str(key)
        if key == "class_path":
            out[prefix or "class_path"] = str(value).rsplit(".", 1)[-1]
        elif isinstance(value, dict):
            out.update(flat_hparams(value, name))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "none" if value is None else value
        else:
            out[name] = str(value)
    return out


class HParamsSummary(pl.Callback):
    """Writes the HParams session of a fit, and the test metrics of a checkpoint beside the fit that made it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.params: dict[str, Any] = {}

    def set_config(self, config: dict) -> None:
        """The resolved run config (the CLI calls this before the trainer runs)."""
        wanted = {k: v for k, v in config.items() if k in ("seed_everything", "trainer", "model", "data")}
        self.params = {k: v for k, v in flat_hparams(wanted).items()
                       if not k.startswith("trainer.") or k.split(".", 1)[1] in TRAINER_KEYS}

    def on_fit_start(self, trainer, pl_module) -> None:
        experiment = _tensorboard(trainer)
        if not self.enabled or experiment is None or not self.params or trainer.global_rank != 0:
            return
        from torch.utils.tensorboard.summary import hparams
        from torch.utils.tensorboard.writer import FileWriter

        # hparams() only declares the metrics; their values are the run's own scalars with these tags. The
        # public writers that take summaries (SummaryWriter.add_hparams, TensorBoardLogger.log_hyperparams) also
        # write those metrics as values, so the session goes through its own event file in the run's folder
        # (TensorBoard reads every event file of a folder as one run)
        writer = FileWriter(experiment.get_logdir(), filename_suffix=".hparams")
        for summary in hparams(self.params, {m: 0.0 for m in METRICS}):
            writer.add_summary(summary)
        writer.close()

    def on_test_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.global_rank != 0:
            return
        fit_dir = fit_log_dir(trainer.ckpt_path, trainer.log_dir)
        if fit_dir is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
                   and getattr(v, "numel", lambda: 1)() == 1}
        step = _fit_global_step(trainer.ckpt_path)
        with SummaryWriter(str(fit_dir), filename_suffix=".test") as writer:
            for key, value in sorted(metrics.items()):
                writer.add_scalar(key, value, step)
        log.info("test metrics also written beside the fit that made the checkpoint: %s", fit_dir)


# trainer settings worth comparing runs by (the rest is plumbing)
TRAINER_KEYS = {"max_epochs", "max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val",
                "deterministic"}


def fit_log_dir(ckpt_path: Optional[str], own_log_dir: Optional[str]) -> Optional[Path]:
    """``checkpoints/E/version_N/x.ckpt`` → ``logs/E/version_N`` when that folder exists and is not this run's."""
    if not ckpt_path:
        return None
    ckpt = Path(ckpt_path).resolve()
    parts = ckpt.parts
    if "checkpoints" not in parts or len(parts) < 4:
        return None
    i = len(parts) - 1 - parts[::-1].index("checkpoints")
    if len(parts) - i != 4:  # checkpoints / E / version_N / file
        return None
    candidate = Path(*parts[:i], "logs", *parts[i + 1:i + 3])
    own = Path(own_log_dir).resolve() if own_log_dir else None
    return candidate if candidate.is_dir() and candidate != own else None


def _fit_global_step(ckpt_path: str) -> int:
    import torch

    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    except Exception:  # a step is only the x position of the point; 0 is a fine fallback
        return 0


def _tensorboard(trainer):
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
