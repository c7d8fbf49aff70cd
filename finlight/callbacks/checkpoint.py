"""ModelCheckpoint that files checkpoints beside the run's logs: ``checkpoints/<experiment>/version_N/``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint



class RunCheckpoint(ModelCheckpoint):
    """Best and last checkpoints on ``val/macro_f1`` (the defaults come from the CLI), under
    ``<root>/<logger name>/version_<logger version>`` so each run's checkpoints match its log folder."""

    def __init__(self, root: str = "checkpoints", **kwargs):
        super().__init__(**kwargs)
        self.root = root

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None and trainer.logger is not None and trainer.logger.version is not None:
            version = trainer.logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            self.dirpath = os.path.join(self.root, trainer.logger.name or "default", version)
        super().setup(trainer, pl_module, stage)

