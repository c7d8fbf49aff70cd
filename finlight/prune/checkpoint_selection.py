"""Which checkpoint of a finished fit to test: ``best``, ``last``, ``final_depth`` (or ``depth``: `select_in_run`).

A run that changes its architecture while training (`SuccessiveLayerDrop`, sub-layer drops) saves checkpoints of
several depths, and its overall best validation score often belongs to a deeper model from before the drops: testing
``best`` would report that model under the pruned run's name. ``final_depth`` picks, among the saved checkpoints
whose recorded architecture is the one the run ended with, the best on the monitored validation metric, so the
selection stays on validation and test is run once on the chosen file.

The architecture is what finlight records in every checkpoint (``checkpoint["finlight"]["backbone"]["config"]``):
``num_hidden_layers`` and, where present, ``removed_sublayers`` (sub-layer drops). Scores are those the checkpoint
callback ranked the files by (``best_k_models``). Ties go to the **earlier** checkpoint, the rule of Lightning's own
``best_model_path`` (``max``/``min`` return the first of equal values), so ``best`` and ``final_depth`` agree
whenever the best checkpoint already has the final depth.

`select_in_run` applies the same rule to a run that finished long ago, from the checkpoint callback state its
``last.ckpt`` keeps: e.g. the best validation checkpoint *at 18 layers* of a run that went on to 15, an
intermediate point of its accuracy-vs-size curve, chosen on validation like the others.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from finlight.errors import FinlightError

HOWS = ("best", "last", "final_depth")
DEPTH = "depth"  # the best at a given architecture (``final``), for `select_in_run`; not a ``seeds --select`` choice


@dataclass(frozen=True)
class Architecture:
    """The structure a checkpoint's backbone was saved with (``removed_sublayers`` as canonical JSON)."""

    layers: int
    removed_sublayers: Optional[str] = None

    def describe(self) -> str:
        extra = f", removed sub-layers {self.removed_sublayers}" if self.removed_sublayers else ""
        return f"{layer_count(self.layers)}{extra}"


@dataclass(frozen=True)
class Candidate:
    """One saved checkpoint: its file, the monitored score it was ranked by (None: not ranked, e.g. a
    ``last.ckpt`` written without a top-k save at its step), its architecture, when it was written and how many
    parameters its state dict holds (adapter-only checkpoints: the trainable ones)."""

    path: str
    score: Optional[float]
    architecture: Architecture
    step: int = 0
    is_last: bool = False
    saved_parameters: Optional[int] = None


@dataclass(frozen=True)
class Selection:
    how: str
    path: str
    monitor: Optional[str]
    mode: str
    value: Optional[float]
    layers: int
    saved_parameters: Optional[int] = None
    removed_sublayers: Optional[str] = None

    def record(self) -> dict:
        """What ``test_metrics.json`` keeps under ``"selected"`` (``removed_sublayers`` only when set)."""
        out = asdict(self)
        if out["removed_sublayers"] is None:
            out.pop("removed_sublayers")
        return out


def architecture_of_config(config: dict) -> Architecture:
    """`Architecture` from a backbone config dict (``model.config.to_dict()``, as finlight checkpoints record)."""
    if "num_hidden_layers" not in config:
        raise FinlightError("the backbone config records no num_hidden_layers; cannot compare depths")
    removed = config.get("removed_sublayers")  # one list per layer, e.g. [[], ["attention"]]; all empty = none
    has_removals = bool(removed) and any(parts for parts in removed)
    return Architecture(int(config["num_hidden_layers"]),
                        json.dumps([sorted(map(str, parts)) for parts in removed]) if has_removals else None)


def select_checkpoint(candidates: Sequence[Candidate], mode: str, how: str,
                      final: Optional[Architecture] = None, monitor: Optional[str] = None) -> Candidate:
    """The checkpoint to test among ``candidates`` (pure: no file is read).

    * ``best``: the best score over every ranked candidate;
    * ``last``: the ``is_last`` candidate (what the fit ended with);
    * ``final_depth``: the best score among the ranked candidates whose architecture equals ``final``; none →
      `FinlightError` (never a silent fall-back to another depth);
    * ``depth``: the same rule for any architecture ``final`` the run passed through (`select_in_run`).

    ``mode`` is the checkpoint callback's (``max``/``min``); ties go to the candidate with the smaller ``step``
    (the earlier one), as Lightning's ``best_model_path``. NaN scores rank last.
    """
    if how not in (*HOWS, DEPTH):
        raise FinlightError(f"--select {how!r}: use one of {', '.join(HOWS)}")
    if mode not in ("max", "min"):
        raise FinlightError(f"checkpoint.mode={mode!r}: use max or min")
    name = monitor or "the monitored metric"
    if how == "last":
        last = [c for c in candidates if c.is_last]
        if not last:
            raise FinlightError("--select last: the fit kept no last checkpoint; set checkpoint.save_last: true")
        return last[-1]
    ranked = [c for c in candidates if c.score is not None]
    if how in ("final_depth", DEPTH):
        if final is None:
            raise FinlightError(f"--select {how} needs the architecture to select at")
        pool = [c for c in ranked if c.architecture == final]
        if not pool:
            kept = [a.describe() for a in sorted({c.architecture for c in ranked},
                                                 key=lambda a: (a.layers, a.removed_sublayers or ""))] or ["none"]
            which = "the run's final architecture" if how == "final_depth" else "the architecture asked for"
            raise FinlightError(
                f"--select {how}: none of the {len(ranked)} checkpoints ranked on {name} has {which} "
                f"({final.describe()}; kept: {'; '.join(kept)}): set checkpoint.save_top_k: -1 to keep "
                f"every validated checkpoint, or test --select last")
    else:
        pool = ranked
        if not pool:
            raise FinlightError(f"--select best: no checkpoint was ranked on {name} (checkpoint.monitor unset, or "
                                f"no validation?); use --select last")
    sign = -1.0 if mode == "max" else 1.0

    def key(c: Candidate):
        score = c.score
        bad = score is None or math.isnan(score)
        return (bad, 0.0 if bad else sign * score, c.step, c.is_last)

    return min(pool, key=key)


# ---------------------------------------------------------------------------------------------- reading files
def read_checkpoint_meta(path: str) -> dict:
    """A finlight checkpoint's recorded backbone config, global step and parameter count, without reading the
    weights into memory (``mmap``: a 7B layer-drop run's checkpoints are tens of GB each)."""
    import torch

    if not os.path.isfile(path):
        raise FinlightError(f"{path}: no such checkpoint file (deleted after the fit?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise FinlightError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160]})") from None
    backbone = (checkpoint.get("finlight") or {}).get("backbone") or {}
    if "config" not in backbone:
        raise FinlightError(f"{path}: records no backbone config (not written by a finlight model?)")
    saved = sum(t.numel() for t in checkpoint.get("state_dict", {}).values() if hasattr(t, "numel"))
    return {"config": backbone["config"], "step": int(checkpoint.get("global_step", 0)), "saved_parameters": saved}


def candidates_from_callback(best_k_models: dict, last_model_path: Optional[str]) -> list[Candidate]:
    """Every checkpoint a ModelCheckpoint kept (its ``best_k_models`` with their scores, and its last file),
    in the order they were written. ``last.ckpt`` gets the score of the ranked file of the same step (the same
    model), else none: it was written after a validation that did not make the top-k."""
    candidates, score_at_step = [], {}
    for path, score in best_k_models.items():
        meta = read_checkpoint_meta(path)
        value = None if score is None else float(score)
        score_at_step.setdefault(meta["step"], value)
        candidates.append(Candidate(os.fspath(path), value, architecture_of_config(meta["config"]), meta["step"],
                                    False, meta["saved_parameters"]))
    if last_model_path and os.path.isfile(last_model_path):
        meta = read_checkpoint_meta(last_model_path)
        candidates.append(Candidate(os.fspath(last_model_path), score_at_step.get(meta["step"]),
                                    architecture_of_config(meta["config"]), meta["step"], True,
                                    meta["saved_parameters"]))
    return sorted(candidates, key=lambda c: (c.step, c.is_last))


def select_from_fit(callback, final_config: Optional[dict], how: str) -> Selection:
    """`select_checkpoint` over what a finished fit's checkpoint ``callback`` kept; ``final_config`` is the
    backbone config the run ended with (``pl_module.model.config.to_dict()``; needed for ``final_depth``)."""
    if callback is None:
        raise FinlightError("the fit had no checkpoint callback (checkpointing off?); nothing to test")
    if how == "best" and callback.monitor is None and callback.best_model_path:
        # no monitor: Lightning's best_model_path is the newest saved file; keep that meaning (as before --select)
        meta = read_checkpoint_meta(callback.best_model_path)
        chosen = Candidate(callback.best_model_path, None, architecture_of_config(meta["config"]), meta["step"],
                           False, meta["saved_parameters"])
    else:
        candidates = candidates_from_callback(dict(callback.best_k_models), callback.last_model_path)
        final = architecture_of_config(final_config) if final_config is not None else None
        chosen = select_checkpoint(candidates, callback.mode, how, final, callback.monitor)
    value = chosen.score if chosen.score is not None and math.isfinite(chosen.score) else None
    return Selection(how, chosen.path, callback.monitor, callback.mode, value, chosen.architecture.layers,
                     chosen.saved_parameters, chosen.architecture.removed_sublayers)


def select_in_run(checkpoint_dir: str, layers: int, allow_missing: bool = False) -> Selection:
    """The best-validation checkpoint with ``layers`` layers (no sub-layer removals) among those a finished fit
    kept in ``checkpoint_dir``, ranked as its ModelCheckpoint ranked them (the state saved in ``last.ckpt``).

    A ranked file deleted since is an error (its depth is unknown, so it might have been the choice) unless
    ``allow_missing``: then it is left out and named in a warning."""
    import ast

    import torch

    last = os.path.join(checkpoint_dir, "last.ckpt")
    if not os.path.isfile(last):
        raise FinlightError(f"{checkpoint_dir}: no last.ckpt, whose checkpoint callback state ranks the run's "
                            f"checkpoints (checkpoint.save_last: true keeps it)")
    states = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("callbacks") or {}
    # Lightning keys a ModelCheckpoint's state by its class name + repr of {monitor, mode, ...}
    found = [(key, state) for key, state in states.items() if isinstance(state, dict) and "best_k_models" in state]
    if len(found) != 1:
        raise FinlightError(f"{last}: records {len(found)} ModelCheckpoint states; need exactly one to rank by")
    key, state = found[0]
    mode = ast.literal_eval(key[key.index("{"):]).get("mode", "max")
    ranked = dict(state["best_k_models"])
    gone = sorted(p for p in ranked if not os.path.isfile(p))
    if gone and not allow_missing:
        raise FinlightError(f"{checkpoint_dir}: {len(gone)} ranked checkpoint(s) deleted since the fit (e.g. "
                            f"{gone[0]}); their depth is unknown, so the choice could be wrong")
    if gone:
        import logging

        logging.getLogger("finlight.checkpoints").warning("select_in_run: left out %d deleted checkpoint(s): %s",
                                                          len(gone), ", ".join(gone))
    candidates = candidates_from_callback({p: v for p, v in ranked.items() if p not in gone}, last)
    chosen = select_checkpoint(candidates, mode, DEPTH, Architecture(int(layers)), state.get("monitor"))
    value = chosen.score if chosen.score is not None and math.isfinite(chosen.score) else None
    return Selection(DEPTH, chosen.path, state.get("monitor"), mode, value, chosen.architecture.layers,
                     chosen.saved_parameters, chosen.architecture.removed_sublayers)


def describe_selection(selected: Optional[dict]) -> Optional[str]:
    """``final_depth (2 layers)`` for a report table; None for a run tested before selections were recorded."""
    if not selected:
        return None
    layers = selected.get("layers")
    return f"{selected.get('how')}" + (f" ({layer_count(layers)})" if layers is not None else "")


def layer_count(layers: int) -> str:
    return f"{layers} layer{'' if layers == 1 else 's'}"
