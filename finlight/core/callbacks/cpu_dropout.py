"""Trains on CPU with finlight's cheaper dropout kernel (:mod:`finlight.core.cpu_dropout`); on by default in the CLI.

The swap happens at ``on_fit_start`` (the device is known then) and is undone at ``teardown``, so checkpoints,
exports and later evaluation see the model's own modules; it changes no parameter and no state-dict key. A config
that wants torch's ``bernoulli_`` dropout (say, to reproduce a run made before this kernel) lists
``{class_path: finlight.core.callbacks.CpuDropoutKernel, init_args: {enabled: false}}`` among its callbacks.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from finlight.core import cpu_dropout


class CpuDropoutKernel(pl.Callback):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._changes: dict = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.enabled or pl_module.device.type != "cpu" or self._changes:
            return
        self._changes = cpu_dropout.enable(pl_module)
        modules, attention = len(self._changes["dropout"]), len(self._changes["attention"])
        if modules or attention:
            rank_zero_info(f"finlight: CPU dropout kernel on {modules} dropout module(s) and the attention of "
                           f"{attention} model(s) (16-bit masks; CpuDropoutKernel(enabled=false) turns it off)")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._changes:
            cpu_dropout.disable(self._changes)
            self._changes = {}
