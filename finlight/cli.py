"""``python -m finlight {fit,validate,test,predict,export} --config configs/X.yaml``.

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

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from finlight.callbacks import EvaluationReport, PredictionWriter, RunCheckpoint
from finlight.checkpoints import check_finlight_checkpoint, resolve_checkpoint_alias
from finlight.errors import FinlightError

DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": "logs", "name": "default"}}


class FinlightCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="Run name under logs/ and checkpoints/ (default: the config file's name).")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/macro_f1", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:02d}-val_macro_f1{val/macro_f1:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        logger = config.trainer.logger
        name = config.experiment or _config_stem(config) or "default"
        if logger is not None and not isinstance(logger, bool) and str(logger.class_path).endswith("TensorBoardLogger"):
            if logger.init_args.get("name") in (None, "default", "lightning_logs"):
                logger.init_args.name = name


    def _check_ckpt_path(self) -> None:
        """``--ckpt_path best|last`` in a new process means the newest fit of this experiment; any checkpoint
        is opened safely (weights only) and checked before Lightning sees it."""
        config = self.config_init[self.subcommand]
        path = config.get("ckpt_path")
        if path is None:
            return
        if path in ("best", "last"):
            checkpoint = next(c for c in self.trainer.callbacks if isinstance(c, RunCheckpoint))
            resolved = resolve_checkpoint_alias(path, checkpoint.root, self.trainer.logger.name)
            print(f"finlight: --ckpt_path {path} → {resolved}")
            config["ckpt_path"] = path = resolved
        check_finlight_checkpoint(path)

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


def _config_stem(config) -> Optional[str]:
    files = config.get("config") or []
    return Path(str(files[-1])).stem if files else None


def _configure_logging() -> None:
    handler = logging.StreamHandler()
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


# Commands beside Lightning's fit/validate/test/predict: name → "module:function(argv)".
EXTRA_COMMANDS = {
    "export": "finlight.export:export_main",
    "pseudo-label": "finlight.pseudo_label:pseudo_label_main",
    "report": "finlight.report:report_main",
    "seeds": "finlight.seeds:seeds_main",
    "export-onnx": "finlight.onnx_export:export_onnx_main",
}


def run_cli(args: Optional[list[str]] = None, **kwargs) -> FinlightCLI:
    """The CLI, in-process (tests call this with ``args``). Any LightningModule / LightningDataModule can be
    named by ``class_path`` (finlight's modules, or your own)."""
    _configure_logging()
    return FinlightCLI(
        None, None,
        subclass_mode_model=True, subclass_mode_data=True,
        seed_everything_default=42,
        trainer_defaults={"logger": DEFAULT_LOGGER},
        parser_kwargs={"default_env": False, "allow_abbrev": False},
        save_config_kwargs={"overwrite": False},
        args=args, **kwargs,
    )


def main(argv: Optional[list[str]] = None) -> None:
    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] and argv[0] in EXTRA_COMMANDS:
            module, function = EXTRA_COMMANDS[argv[0]].split(":")
            _configure_logging()
            getattr(importlib.import_module(module), function)(argv[1:])
        else:
            run_cli(given)
    except FinlightError as err:
        print(f"finlight: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("finlight: interrupted", file=sys.stderr)
        sys.exit(130)
