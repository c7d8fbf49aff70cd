"""Checkpoint files: safe loading, and what ``--ckpt_path best|last`` means in a new process."""

from __future__ import annotations

import os

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from finlight.errors import FinlightError


def load_checkpoint(path: str) -> dict:
    """``torch.load`` with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code."""
    if not os.path.isfile(path):
        raise FinlightError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, not a checkpoint at all …
        raise FinlightError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160]})") from None


def check_finlight_checkpoint(path: str) -> dict:
    """Refuse, with one line, a file Lightning would choke on (truncated, foreign, not a finlight run)."""
    checkpoint = load_checkpoint(path)
    if "pytorch-lightning_version" not in checkpoint or "state_dict" not in checkpoint:
        raise FinlightError(f"{path}: not a Lightning checkpoint (no state_dict/version); was it written by finlight fit?")
    if "finlight" not in checkpoint:
        raise FinlightError(f"{path}: was not written by a finlight model (no 'finlight' entry)")
    return checkpoint


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
    run = latest_run_dir(root, experiment)
    last = os.path.join(run, "last.ckpt")
    if alias == "last":
        return last
    states = load_checkpoint(last).get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if "Checkpoint" in k and s.get("best_model_path")), None)
    if not best or not os.path.isfile(best):
        raise FinlightError(f"{last} records no best checkpoint that still exists ({best!r}); pass --ckpt_path explicitly")
    return best


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to ``<name>.tmp`` beside the target, flushed to disk, then renamed over it.

    Lightning's own save goes through a temp file in the system temp folder and ``shutil.move``, which is a
    copy — not atomic — when that folder is on another file system. A run killed mid-save here leaves the
    previous checkpoint intact (and at worst a stray ``.tmp``), never a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.tmp"
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def check_state_dict_fits(expected: dict, found: dict, what: str = "the checkpoint", hint: str = "") -> None:
    """One-line error instead of PyTorch's wall of missing/unexpected keys."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {tuple(found[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
             if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} with another shape (e.g. {wrong[0]})" if wrong else ""]
        raise FinlightError(f"{what} does not fit this model: " + ", ".join(p for p in parts if p) + hint)
