"""``python -m finlight {fit,validate,test,predict} --config configs/X.yaml``, and the extra commands
``export``, ``export-onnx``, ``pseudo-label``, ``report``, ``seeds`` (see `EXTRA_COMMANDS`).

A LightningCLI whose defaults make every run land in ``logs/<experiment>/version_N/`` (TensorBoard events,
resolved config, data report, test metrics, predictions) and ``checkpoints/<experiment>/version_N/``.
``<experiment>`` is ``--experiment`` or, by default, the config file's name.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from finlight.core import cpu_memory
from finlight.core.callbacks import CpuDropoutKernel, EvaluationReport, PredictionWriter, RunCheckpoint
from finlight.core.callbacks.hparams import HParamsSummary
from finlight.core.callbacks.rng_state import RNGState
from finlight.core.checkpoints import check_checkpoint_suits, check_finlight_checkpoint, resolve_checkpoint_alias
from finlight.errors import FinlightError

DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False}}


class FinlightCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="Run name under logs/ and checkpoints/ (default: the config file's name).")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/macro_f1", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(RNGState, "rng_state")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(HParamsSummary, "hparams")

    # LightningCLI internal, overridden on purpose: in __init__ it runs right after parsing and would apply the
    # checkpoint's hyper-parameters over the config; no public hook replaces it (tests/test_lightning_internals.py
    # fails loudly if Lightning renames it or moves the call)
    def _parse_ckpt_path(self) -> None:
        """Before Lightning reads ``--ckpt_path``: ``best|last`` in a new process mean the newest fit of this
        experiment, and any checkpoint is opened safely (weights only) and checked, one line if it is bad."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        path = config.get("ckpt_path") if config is not None else None
        self._resume_version = None
        if path:
            if path in ("best", "last"):
                resolved = resolve_checkpoint_alias(path, config.checkpoint.root, _experiment(config))
                print(f"finlight: --ckpt_path {path} → {resolved}")
                if subcommand == "fit":
                    # resuming: keep writing into the interrupted run's folders, not a new version_N
                    self._resume_version = os.path.basename(os.path.dirname(resolved))
                config.ckpt_path = path = resolved
            checkpoint = check_finlight_checkpoint(path)
            check_checkpoint_suits(checkpoint, path, config.model.get("class_path") if config.get("model") else None)
            if subcommand == "fit" and "optimizer_states" not in checkpoint:
                raise FinlightError(f"{path} holds weights only (as best checkpoints do), not the state a fit "
                                    f"resumes from; resume with --ckpt_path last")
        # Lightning would now overwrite the model's config with the checkpoint's hyper-parameters, silently
        # ignoring --model.* on the command line. finlight runs the config it is given; the checkpoint
        # supplies weights and architecture (each module rebuilds its backbone from it in on_load_checkpoint).

    def before_instantiate_classes(self) -> None:
        from finlight.commands import refuse_nulls
        from finlight.core.checkpoints import plain_numbers

        # range-typed numbers → plain (weights_only checkpoints)
        self.config[self.subcommand] = config = plain_numbers(self.config[self.subcommand])
        for key in ("model", "data"):
            refuse_nulls(config.get(key), key)
        for callback in config.trainer.get("callbacks") or []:
            refuse_nulls(callback, f"trainer.callbacks[{callback.get('class_path')}]")
        logger = config.trainer.logger
        if _is_tensorboard(logger) and logger.init_args.get("name") in (None, "default", "lightning_logs"):
            logger.init_args.name = _experiment(config)
        if self._resume_version is not None and _takes_version(logger) and logger.init_args.get("version") is None:
            logger.init_args.version = self._resume_version  # the logger's own argument: no version_N+1

    def before_fit(self) -> None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, HParamsSummary):
                callback.set_config(self.config[self.subcommand].clone().as_dict())

    def _weights_from_checkpoint(self) -> None:
        """Evaluating a checkpoint: a model that can rebuild itself from it skips building the configured
        backbone first (Lightning calls ``setup`` before it reads the checkpoint)."""
        if self.config[self.subcommand].get("ckpt_path") and hasattr(self.model, "weights_from_checkpoint"):
            self.model.weights_from_checkpoint = True

    before_validate = before_test = before_predict = _weights_from_checkpoint

    def instantiate_trainer(self, **kwargs):
        """``trainer.precision: auto`` (the default) becomes bf16-mixed or 32-true for this machine (one line
        says which and why); the choice is recorded in the run folder as ``precision.json``. On CPU the process
        keeps freed memory for reuse (:mod:`finlight.core.cpu_memory`)."""
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        from finlight.core.precision import AUTO, PrecisionRecord, resolve_precision

        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer", {})
        choice = resolve_precision(kwargs.get("precision", config.get("precision")), config.get("accelerator"))
        if choice.requested == AUTO:
            kwargs["precision"] = choice.precision
            if rank_zero_only.rank == 0:
                print(f"finlight: precision auto → {choice.precision} ({choice.reason})")
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer.accelerator, CPUAccelerator):
            kept = cpu_memory.keep_freed_memory()
            if kept and rank_zero_only.rank == 0:
                print(f"finlight: {kept}")
        trainer.callbacks.append(PrecisionRecord(choice))
        if not any(isinstance(c, CpuDropoutKernel) for c in trainer.callbacks):
            trainer.callbacks.append(CpuDropoutKernel())
        return trainer


    # LightningCLI internal, overridden on purpose: the CLI adds finlight's RunCheckpoint itself (the "checkpoint"
    # group), so `trainer.enable_checkpointing: false` would meet a ModelCheckpoint and Lightning would refuse the
    # run; no public hook sees the extra callbacks (tests/test_lightning_internals.py checks the signature)
    def _instantiate_trainer(self, config: dict, callbacks: list):
        """``trainer.enable_checkpointing: false`` means no checkpoint: drop the CLI's own RunCheckpoint."""
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, RunCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)


def _is_tensorboard(logger) -> bool:
    return logger is not None and not isinstance(logger, bool) and str(logger.class_path).endswith("TensorBoardLogger")


def _takes_version(logger) -> bool:
    """A configured logger class with a ``version`` argument (TensorBoardLogger, CSVLogger)."""
    init_args = getattr(logger, "init_args", None) if logger is not None and not isinstance(logger, bool) else None
    return init_args is not None and "version" in init_args


def _experiment(config) -> str:
    """The run name: the logger's explicit name, else ``--experiment``, else the config file's name."""
    logger = config.trainer.logger
    if _is_tensorboard(logger) and logger.init_args.get("name") not in (None, "default", "lightning_logs"):
        return logger.init_args.name
    return config.experiment or _config_stem(config) or "default"


def _finlight_cause(err: BaseException) -> Optional[FinlightError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, FinlightError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _first_line(err: Exception) -> str:
    """jsonargparse nests errors (model → class_path → key); keep the innermost key and its reason."""
    from finlight.commands import error_line

    return error_line(err)


def _config_stem(config) -> Optional[str]:
    files = config.get("config") or []
    return Path(str(files[-1])).stem if files else None


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written, not the one of setup time: a process
    that redirects or captures stderr later (pytest's capsys, a notebook) keeps getting finlight's lines instead of
    writing to a closed stream. (The standard library's own such class, ``logging._StderrHandler``, is private.)"""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ / setStream assign it: always follow sys.stderr
        pass


def _configure_logging() -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("finlight %(levelname)s: %(message)s"))
    logger = logging.getLogger("finlight")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Batches are pre-tokenized and collated in microseconds: extra workers cost more than they give here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # evaluating a checkpoint from another run folder: Lightning warns that it keeps only best_model_path
    warnings.filterwarnings("ignore", ".*The dirpath has changed from.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")  # resuming


# Commands beside Lightning's fit/validate/test/predict: name → "module:function(argv)".
EXTRA_COMMANDS = {
    "export": "finlight.deploy.export:export_main",
    "pseudo-label": "finlight.distill.pseudo_label:pseudo_label_main",
    "report": "finlight.report.compare:report_main",
    "seeds": "finlight.report.seeds:seeds_main",
    "export-onnx": "finlight.deploy.onnx:export_onnx_main",
    "quantize": "finlight.quantize.ptq:quantize_main",
    "models": "finlight.core.pretrained:models_main",
    "tfidf": "finlight.core.classical:tfidf_main",
}


def run_cli(args: Optional[list[str]] = None, **kwargs) -> FinlightCLI:
    """The CLI, in-process (tests call this with ``args``). Any LightningModule / LightningDataModule can be
    named by ``class_path`` (finlight's modules, or your own)."""
    _configure_logging()
    return FinlightCLI(
        None, None,
        subclass_mode_model=True, subclass_mode_data=True,
        seed_everything_default=42,
        trainer_defaults={"logger": DEFAULT_LOGGER, "precision": "auto",  # see finlight.core.precision
                          "plugins": [{"class_path": "finlight.core.checkpoints.BackgroundCheckpointIO"}]},
        parser_kwargs={"default_env": False, "allow_abbrev": False, "exit_on_error": False},
        save_config_kwargs={"overwrite": True},  # only a resumed run writes into an existing folder
        args=args, **kwargs,
    )


def refuse_old_paths(argv: list[str]) -> None:
    """A config or argument naming a module path of the old layout: one line with the new path."""
    from finlight.moved import hint_for

    for i, arg in enumerate(argv):
        texts = [(arg, "argument")]
        if i > 0 and argv[i - 1] == "--config" and Path(arg).is_file():
            texts.append((Path(arg).read_text(errors="replace"), arg))
        for text, where in texts:
            hint = hint_for(text)
            if hint:
                raise FinlightError(f"{where}: {hint}")


def main(argv: Optional[list[str]] = None) -> None:
    from finlight.commands import check_config_files

    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        refuse_old_paths(argv)
        if argv[:1] and argv[0] in EXTRA_COMMANDS:
            module, function = EXTRA_COMMANDS[argv[0]].split(":")
            _configure_logging()
            getattr(importlib.import_module(module), function)(argv[1:])
        else:
            check_config_files(argv)  # a YAML mistake names its file and line
            run_cli(given)
    except FinlightError as err:
        print(f"finlight: error: {err}", file=sys.stderr)
        sys.exit(2)
    except ValueError as err:  # jsonargparse wraps what a class's __init__ raises while instantiating it
        cause = _finlight_cause(err)
        if cause is None:
            raise
        print(f"finlight: error: {cause}", file=sys.stderr)
        sys.exit(2)
    except ArgumentError as err:  # a config or command-line mistake: its first line names the key
        print(f"finlight: error: {_first_line(err)} (see `python -m finlight {argv[0] if argv else ''} --help`)",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("finlight: interrupted", file=sys.stderr)
        sys.exit(130)
