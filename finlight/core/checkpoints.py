"""Checkpoint files: safe loading, and what ``--ckpt_path best|last`` means in a new process."""

from __future__ import annotations

import collections
import copy
import logging
import os
import time
from typing import Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from finlight.errors import FinlightError

log = logging.getLogger("finlight.checkpoint")


def load_checkpoint(path: str) -> dict:
    """``torch.load`` with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code."""
    if os.path.islink(path) and not os.path.exists(path):
        raise FinlightError(f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist; point "
                            f"--ckpt_path at the checkpoint itself")
    if os.path.isdir(path):
        raise FinlightError(f"{path}: is a directory; point --ckpt_path at a .ckpt file inside it (or use best / last)")
    if not os.path.isfile(path):
        raise FinlightError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise FinlightError(f"{path}: not a readable checkpoint (the file is empty: an interrupted copy?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, not a checkpoint at all …
        first = (str(err).splitlines() or [""])[0][:160]
        raise FinlightError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first})") from None


def check_finlight_checkpoint(path: str) -> dict:
    """Refuse, with one line, a file Lightning would choke on (truncated, foreign, not a finlight run)."""
    checkpoint = load_checkpoint(path)
    if "pytorch-lightning_version" not in checkpoint or "state_dict" not in checkpoint:
        raise FinlightError(f"{path}: not a Lightning checkpoint (no state_dict/version); was it written by finlight fit?")
    if "finlight" not in checkpoint:
        raise FinlightError(f"{path}: was not written by a finlight model (no 'finlight' entry)")
    return checkpoint


def check_checkpoint_suits(checkpoint: dict, path: str, class_path: Optional[str] = None) -> None:
    """The checkpoint suits this run: written by the configured module class (or one it derives from, or that
    derives from it), and — holding only adapters — its base model still where the run found it."""
    written_by = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path and written_by and written_by != class_path:
        ours, theirs = import_class(class_path), import_class(written_by)
        if ours is not None and theirs is not None and not (issubclass(ours, theirs) or issubclass(theirs, ours)):
            raise FinlightError(f"{path}: written by {written_by}, but model.class_path is {class_path}; use the "
                                f"config that trained it (the two modules do not share weights)")
    info = checkpoint.get("finlight") or {}
    base = info.get("base")
    if info.get("adapter_only") and isinstance(base, str) and base.startswith((".", "/", "~")) \
            and not os.path.isdir(os.path.expanduser(base)):
        raise FinlightError(f"{path}: holds only the trained adapters; their base model {base!r} is gone (no such "
                            f"directory): put the base back there, or run from the folder the run was trained in")


def import_class(class_path: str):
    """The class a ``class_path`` names, or None when it does not import."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


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


def plain_numbers(value):
    """A copy with int / float subclasses (jsonargparse's ``PositiveInt`` … from the config) as plain numbers:
    a checkpoint holding one no longer loads with ``weights_only=True``. Tensors are kept, not copied; parsed
    settings (jsonargparse namespaces, for the CLI and the extra commands) are copied the same way."""
    from jsonargparse import Namespace

    if isinstance(value, torch.Tensor) or isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and type(value) is not int:
        return int(value)
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    if isinstance(value, Namespace):
        out = copy.copy(value)
        for key, item in list(vars(value).items()):
            setattr(out, key, plain_numbers(item))
        return out
    if isinstance(value, dict):
        out = copy.copy(value)  # the same mapping type (OrderedDict state dicts keep their metadata)
        for key, item in value.items():
            out[key] = plain_numbers(item)
        return out
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(plain_numbers(v) for v in value)
    return value


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to ``<name>.tmp`` beside the target, flushed to disk, then renamed over it.

    Lightning's own save goes through a temp file in the system temp folder and ``shutil.move``, which is a
    copy — not atomic — when that folder is on another file system. A run killed mid-save here leaves the
    previous checkpoint intact (and at worst a stray ``.tmp``), never a truncated ``last.ckpt``. Each finished
    write is logged (file, size, seconds) and kept in ``written`` for the checkpoint callback's metrics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.written: collections.deque = collections.deque()  # appended by the writing thread (thread-safe)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        start = time.perf_counter()
        checkpoint = plain_numbers(checkpoint)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.tmp"
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        record = {"path": path, "mb": os.path.getsize(path) / 1e6, "seconds": time.perf_counter() - start,
                  "weights_only": "optimizer_states" not in checkpoint, "step": checkpoint.get("global_step")}
        log.info("checkpoint %s: %.1f MB (%s) written in %.2f s", os.path.basename(path), record["mb"],
                 "weights only" if record["weights_only"] else "full resumable state", record["seconds"])
        self.written.append(record)

    def take_written(self) -> list[dict]:
        """The writes finished since the last call (oldest first)."""
        taken = []
        while self.written:
            taken.append(self.written.popleft())
        return taken


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """:class:`AtomicCheckpointIO` in a background thread (Lightning's ``AsyncCheckpointIO``): the training loop
    waits only for a copy of the state (Lightning clones every tensor before handing it over), not for the
    fsynced write — for MiniLM's 273 MB AdamW state ~0.1 s instead of ~0.8 s an epoch.

    Removals queue behind the writes (``AsyncCheckpointIO`` removes at once, so a best file superseded while it
    is still being written would reappear afterwards). The end of a stage, an error or Ctrl-C waits for the
    queue (Lightning's strategy teardown); a killed process loses at most the write in flight, and the file it
    would have replaced stays whole."""

    def __init__(self, checkpoint_io: Optional[TorchCheckpointIO] = None) -> None:
        super().__init__(checkpoint_io if checkpoint_io is not None else AtomicCheckpointIO())

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        # the path is resolved now: the working directory may change before the thread writes
        # (finlight.dendrites.perforate runs PerforatedAI inside its own folder, which writes relative paths)
        super().save_checkpoint(checkpoint, os.path.abspath(path), storage_options)

    def remove_checkpoint(self, path) -> None:
        self._ensure_setup()
        self._executor.submit(self._remove, os.path.abspath(path))

    def _remove(self, path) -> None:
        try:
            self.checkpoint_io.remove_checkpoint(path)
        except BaseException as error:  # raised on the next save or at teardown, as a failed write is
            self._error = error

    def take_written(self) -> list[dict]:
        inner = self.checkpoint_io
        return inner.take_written() if hasattr(inner, "take_written") else []


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
