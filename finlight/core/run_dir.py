"""Where a run writes its files, safely under DDP."""

from __future__ import annotations

from typing import Optional


def run_dir(trainer) -> Optional[str]:
    """``trainer.log_dir`` without its broadcast.

    Lightning's ``trainer.log_dir`` is a collective (it broadcasts rank 0's path): called from rank 0 alone —
    as every "write a file once" branch does — it waits forever for the other ranks. finlight writes files on
    rank 0 only, so it reads the logger's folder directly.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    return logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
