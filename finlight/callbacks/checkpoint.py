"""ModelCheckpoint that files checkpoints beside the run's logs: ``checkpoints/<experiment>/version_N/``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint

from finlight.errors import FinlightError


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


def latest_run_dir(root: str, experiment: str) -> str:
    """The newest ``version_N`` folder of an experiment that holds a ``last.ckpt``."""
    folder = os.path.join(root, experiment)
    versions = [d for d in os.listdir(folder)] if os.path.isdir(folder) else []
    versions = [d for d in versions if os.path.isfile(os.path.join(folder, d, "last.ckpt"))]
    if not versions:
        raise FinlightError(f"no finished run of experiment {experiment!r} under {folder}/ (no last.ckpt): "
                            f"run fit first, or pass --ckpt_path path/to/file.ckpt")
    newest = max(versions, key=lambda d: (int(d.split("_")[-1]) if d.split("_")[-1].isdigit() else -1, d))
    return os.path.join(folder, newest)


def resolve_checkpoint_alias(alias: str, root: str, experiment: str) -> str:
    """``best`` / ``last`` across processes: the newest run's last.ckpt, or the best checkpoint it recorded."""
    from finlight.export import load_checkpoint

    run = latest_run_dir(root, experiment)
    last = os.path.join(run, "last.ckpt")
    if alias == "last":
        return last
    states = load_checkpoint(last).get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if "Checkpoint" in k and s.get("best_model_path")), None)
    if not best or not os.path.isfile(best):
        raise FinlightError(f"{last} records no best checkpoint that still exists ({best!r}); pass --ckpt_path explicitly")
    return best
