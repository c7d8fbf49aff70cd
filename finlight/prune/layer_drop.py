"""Successive layer dropping (SAPLING / TrimLLM) while fine-tuning a `SequenceClassifier` or a
`CausalLMClassifier` (ablation scores a causal LM by its label-word class probabilities).

Every ``every_n_epochs`` epochs, at the start of the next training epoch, the remaining units (layers; for
ALBERT, repeats of the shared layer; with ``granularity: sublayer``, each decoder layer's attention and MLP, as
TrimLLM) are scored on ``calibration_examples`` examples of the calibration split (validation by default), the
least important one is removed for real (`finlight.prune.surgery`), and the optimizer and scheduler are rebuilt for
the remaining weights (the scheduler fast-forwarded to the current step, so a warm-up is not repeated).
Dropping stops at ``target_layers`` (sub-layers: ``target_sublayers``, the attention + MLP parts left) or
``target_param_ratio``; training goes on to ``max_epochs`` to recover. If the monitored validation metric
falls more than ``tolerance`` below its best after a drop, the model before that drop (with the weights it had
then) is restored and training stops.

Dropping happens at the start of an epoch, not right after validation, so every checkpoint holds the model
its validation score was measured on. finlight checkpoints record the backbone config at save time, so a
pruned checkpoint rebuilds the pruned architecture (``test --ckpt_path``, resume, export).

Each drop is logged (``layer_drop/*`` scalars, the unit as ``layer_drop/dropped`` text) and appended to
``layer_drop.json`` in the run folder (``"dropped": [2]`` for a layer, ``["attention", 3]`` for a sub-layer;
with ``units_per_drop`` k > 1, the k layer indices ``[2, 5, 7]`` or sub-layers ``[["mlp", 3], ["mlp", 5]]``, each
in the numbering of the model before that drop).

``units_per_drop`` removes the k lowest-scored units of one scoring at once (as ShortGPT removes its n lowest
block-influence layers in one shot), never past the target. Why: on a CPU a 30-layer decoder cannot afford an
epoch per unit (e.g. SmolLM2-135M 30 → 15 layers, or TrimLLM's ~20 MLPs to reach the same parameter count), and
ablation scores every remaining unit per drop; k per drop divides both costs by k.
Single-process only: under DDP each rank's wrapper holds the old parameters (refused with a message).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from finlight.prune import importance, surgery
from finlight.errors import FinlightError
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.callbacks")
Method = Literal["ablation", "block_influence", "angular_distance"]
CalibrationMetric = Literal["loss", "acc", "macro_f1"]
Granularity = Literal["layer", "sublayer"]


class SuccessiveLayerDrop(pl.Callback):
    """Drop the least important layer every ``every_n_epochs`` epochs (see the module docstring).

    Args:
        every_n_epochs: epochs of training between drops (the first drop follows the first k epochs).
        method: ``ablation`` (the calibration metric with each layer bypassed — SAPLING), ``block_influence``
            (1 − cos(input, output) of each layer) or ``angular_distance`` (between the states ``angular_n``
            layers apart: the whole block of ``angular_n`` layers goes at once).
        calibration_split: ``val`` or ``train`` (the first ``calibration_examples`` of its dataloader).
        calibration_metric: for ablation: ``loss`` (minus the mean cross-entropy: continuous, so a few dozen
            examples still rank layers), ``acc`` or ``macro_f1`` (SAPLING's task metric; ties are frequent).
        target_layers / target_param_ratio: stop dropping at this depth / parameter fraction of the start.
        granularity: ``layer``, or ``sublayer`` (decoders: Llama, Mistral, Qwen2, Phi) to remove one attention or
            MLP at a time, scored by ablation only (the hidden-state scores compare whole layers' inputs and
            outputs, which says nothing about one part of a layer). Depth is then a poor budget — a layer stays
            while either part does — so sub-layer runs stop at ``target_sublayers`` (attention + MLP parts
            left, two per layer at the start) or ``target_param_ratio``; ``target_layers`` is refused.
        monitor / tolerance: restore the last good model and stop when ``monitor`` (higher is better) falls
            more than ``tolerance`` below its best after a drop.
        units_per_drop: how many of the lowest-scored units one drop removes (ablation / block_influence; the
            last drop stops at the target). ``angular_distance`` removes its block of ``angular_n`` instead.
    """

    def __init__(self, every_n_epochs: int = 1, method: Method = "ablation", calibration_split: str = "val",
                 calibration_examples: int = 64, calibration_metric: CalibrationMetric = "loss",
                 target_layers: Optional[int] = None, target_param_ratio: Optional[float] = None,
                 monitor: str = "val/macro_f1", tolerance: float = 0.05, angular_n: int = 1,
                 granularity: Granularity = "layer", target_sublayers: Optional[int] = None,
                 units_per_drop: int = 1):
        if every_n_epochs < 1:
            raise FinlightError(f"SuccessiveLayerDrop.every_n_epochs={every_n_epochs}: must be ≥ 1")
        if granularity not in ("layer", "sublayer"):
            raise FinlightError(f"SuccessiveLayerDrop.granularity={granularity!r}: use layer or sublayer")
        if granularity == "sublayer":
            if method != "ablation":
                raise FinlightError(f"SuccessiveLayerDrop: granularity='sublayer' scores attention / MLP by ablation "
                                    f"only; method={method!r} compares whole layers' hidden states: use method: "
                                    "ablation")
            if target_layers is not None:
                raise FinlightError("SuccessiveLayerDrop: with granularity='sublayer' stop at target_sublayers "
                                    "(attention + MLP parts left) or target_param_ratio, not target_layers")
            if target_sublayers is None and target_param_ratio is None:
                raise FinlightError("SuccessiveLayerDrop: set target_sublayers or target_param_ratio (where to stop)")
            if target_sublayers is not None and target_sublayers < 1:
                raise FinlightError(f"SuccessiveLayerDrop.target_sublayers={target_sublayers}: at least one part "
                                    "must remain")
        elif target_sublayers is not None:
            raise FinlightError("SuccessiveLayerDrop.target_sublayers counts attention / MLP parts: set "
                                "granularity: sublayer, or use target_layers")
        if target_layers is None and target_param_ratio is None and granularity == "layer":
            raise FinlightError("SuccessiveLayerDrop: set target_layers or target_param_ratio (where to stop)")
        if target_layers is not None and target_layers < 1:
            raise FinlightError(f"SuccessiveLayerDrop.target_layers={target_layers}: at least one layer must remain")
        if target_param_ratio is not None and not 0.0 < target_param_ratio <= 1.0:
            raise FinlightError(f"SuccessiveLayerDrop.target_param_ratio={target_param_ratio}: must be in (0, 1]")
        if calibration_split not in ("val", "train"):
            raise FinlightError(f"SuccessiveLayerDrop.calibration_split={calibration_split!r}: use val or train")
        if calibration_examples < 1 or tolerance < 0 or angular_n < 1:
            raise FinlightError("SuccessiveLayerDrop: calibration_examples and angular_n must be ≥ 1, "
                                "tolerance ≥ 0")
        if method not in ("ablation", "block_influence", "angular_distance"):
            raise FinlightError(f"SuccessiveLayerDrop.method={method!r}: use ablation, block_influence or "
                                "angular_distance")
        if units_per_drop < 1:
            raise FinlightError(f"SuccessiveLayerDrop.units_per_drop={units_per_drop}: must be ≥ 1")
        if units_per_drop > 1 and method == "angular_distance":
            raise FinlightError("SuccessiveLayerDrop.units_per_drop: angular_distance removes a block of angular_n "
                                "consecutive layers per drop; set angular_n instead (units_per_drop: 1)")
        self.units_per_drop = units_per_drop
        self.every_n_epochs, self.method, self.angular_n = every_n_epochs, method, angular_n
        self.calibration_split, self.calibration_examples = calibration_split, calibration_examples
        self.calibration_metric = calibration_metric
        self.target_layers, self.target_param_ratio = target_layers, target_param_ratio
        self.granularity, self.target_sublayers = granularity, target_sublayers
        self.monitor, self.tolerance = monitor, tolerance
        self.initial_params: Optional[int] = None
        self.best: Optional[float] = None
        self.history: list[dict] = []
        self.finished = False
        self._snapshot = None  # the model before the latest drop, with its weights then (in CPU memory)
        self._snapshot_scores: Optional[dict] = None  # its validation metrics
        self._last_validated: Optional[tuple[int, dict]] = None  # (global step, the val/* metrics then)

    # ------------------------------------------------------------------ state (resume)
    def state_dict(self) -> dict:
        validated = self._last_validated
        return {"initial_params": self.initial_params, "best": self.best, "history": self.history,
                "finished": self.finished,
                "last_validated": None if validated is None else
                [validated[0], {k: float(v) for k, v in validated[1].items()}]}

    def load_state_dict(self, state: dict) -> None:
        self.initial_params, self.best = state["initial_params"], state["best"]
        self.history, self.finished = list(state["history"]), bool(state["finished"])
        validated = state.get("last_validated")  # a resumed run's first snapshot keeps its own scores
        self._last_validated = None if validated is None else (
            int(validated[0]), {k: torch.tensor(v) for k, v in validated[1].items()})

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise FinlightError("SuccessiveLayerDrop runs in a single process (devices: 1); under DDP the "
                                "replicas would keep the dropped layers' parameters")
        if getattr(pl_module, "adapter_only", False):
            raise FinlightError("SuccessiveLayerDrop needs a fully trained backbone: remove model.lora / "
                                "model.quantization")
        surgery.units(pl_module.model, self.granularity)  # a clear error now, not after the first epochs
        if self.initial_params is None:
            self.initial_params = surgery.parameter_count(pl_module.model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise FinlightError(f"SuccessiveLayerDrop.monitor={self.monitor!r} is not logged; validation logs {logged}")
        value = float(trainer.callback_metrics[self.monitor])
        if self._snapshot is not None and self.best is not None and value < self.best - self.tolerance:
            self._revert(trainer, pl_module, value)
            return
        self.best = value if self.best is None else max(self.best, value)
        metrics = trainer.callback_metrics
        self._last_validated = (trainer.global_step, {k: v.detach().clone() for k, v in metrics.items()
                                                      if k.startswith("val/") and isinstance(v, torch.Tensor)})

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.finished or epoch == 0 or epoch % self.every_n_epochs:
            return
        if self._reached_target(pl_module.model):
            self.finished = True
            parts = self._parts(pl_module.model)
            log.info("layer drop: target reached (%d layers%s), no more drops", surgery.num_layers(pl_module.model),
                     "" if parts is None else f", {parts} attention / MLP parts")
            return
        self._drop(trainer, pl_module)

    # ------------------------------------------------------------------ the work
    def _reached_target(self, model) -> bool:
        if not surgery.units(model, self.granularity):
            return True
        if self.target_sublayers is not None and surgery.count_sublayers(model) <= self.target_sublayers:
            return True
        if self.target_layers is not None and surgery.num_layers(model) <= self.target_layers:
            return True
        if self.target_param_ratio is None:
            return False
        return surgery.parameter_count(model) / self.initial_params <= self.target_param_ratio

    def _drop(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        batches = self._calibration_batches(trainer, pl_module)
        was_training = model.training
        model.eval()
        try:
            before = calibration_metric(pl_module, batches, self.calibration_metric)
            if self.granularity == "sublayer":
                by_unit = self._score_sublayers(pl_module, batches)
                ranked = _ranked(by_unit)
                score = by_unit[ranked[0]]
                scores = {f"{part}.{index}": value for (part, index), value in by_unit.items()}
            else:
                by_layer, dropped = self._score(pl_module, batches, before)
                score, scores = by_layer[dropped[0]], {str(k): v for k, v in by_layer.items()}
                kind = "repeat" if surgery.family(model) == "albert" else "layer"
                ranked = [(kind, i) for i in _ranked(by_layer)]
            params_before, layers_before = surgery.parameter_count(model), surgery.num_layers(model)
            parts_before = self._parts(model)
            self._snapshot = offloaded_copy(model)
            validated = self._last_validated  # the snapshot's own scores, if its weights were the ones validated
            self._snapshot_scores = validated[1] if validated and validated[0] == trainer.global_step else None
            if self.granularity == "layer" and self.method == "angular_distance":
                surgery.drop_layers(model, dropped)  # the block of angular_n layers goes at once
            else:
                gone = self._drop_ranked(model, ranked, self.units_per_drop)
                if self.granularity == "sublayer":
                    dropped = list(gone[0]) if len(gone) == 1 else [list(unit) for unit in gone]
                else:
                    dropped = [unit[1] for unit in gone]
            after = calibration_metric(pl_module, batches, self.calibration_metric)
        finally:
            model.train(was_training)
        rebuild_optimizers(trainer)
        record = {
            "epoch": trainer.current_epoch, "global_step": trainer.global_step, "method": self.method,
            "granularity": self.granularity, "dropped": dropped, "score": score, "scores": scores,
            "calibration_metric": self.calibration_metric, "metric_before": before, "metric_after": after,
            "val_best": self.best, "layers_before": layers_before, "layers_after": surgery.num_layers(model),
            "params_before": params_before, "params_after": surgery.parameter_count(model),
            "param_ratio": surgery.parameter_count(model) / self.initial_params,
        }
        if parts_before is not None:
            record.update(sublayers_before=parts_before, sublayers_after=self._parts(model))
        self.history.append(record)
        log.info("layer drop: removed %s (score %.4g), %d → %d layers, %s %.4f → %.4f", dropped, score,
                 layers_before, record["layers_after"], self.calibration_metric, before, after)
        scalars = {"layer_drop/layers": record["layers_after"], "layer_drop/params": record["params_after"],
                   "layer_drop/score": score, "layer_drop/metric_before": before, "layer_drop/metric_after": after}
        if parts_before is not None:
            scalars["layer_drop/sublayers"] = record["sublayers_after"]
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_text"):  # TensorBoard: which unit went, by name
                writer.add_text("layer_drop/dropped", json.dumps(dropped), trainer.global_step)
        self._write(trainer)

    def _drop_ranked(self, model, ranked: list, k: int) -> list:
        """Remove up to ``k`` units of ``ranked`` (cheapest first), one at a time, stopping at the target; returns
        them in the numbering of the model before this drop. A layer that goes shifts the later indices down."""
        gone, removed_layers = [], []
        for kind, index in ranked:
            if len(gone) == k or (gone and self._reached_target(model)):
                break
            current = index - sum(1 for r in removed_layers if r < index)
            depth = surgery.num_layers(model)
            surgery.drop_unit(model, (kind, current))
            if surgery.num_layers(model) < depth:
                removed_layers.append(index)
            gone.append((kind, index))
        return gone

    def _parts(self, model) -> Optional[int]:
        """Attention + MLP parts left (sub-layer runs only)."""
        return surgery.count_sublayers(model) if self.granularity == "sublayer" else None

    def _score_sublayers(self, pl_module, batches) -> dict:
        """Ablation score of every remaining attention and MLP: ``{("attention", i): score, ...}``."""
        model = pl_module.model
        _, by_unit = importance.ablation_scores(
            surgery.units(model, "sublayer"), lambda: calibration_metric(pl_module, batches, self.calibration_metric),
            lambda unit: surgery.bypass(model, unit))
        return by_unit

    def _score(self, pl_module, batches, baseline: float) -> tuple[dict, list[int]]:
        """Scores by unit index (lower = drop first) and the layer indices to remove."""
        model = pl_module.model
        candidates = surgery.units(model)
        if surgery.family(model) == "albert":  # one candidate: a repeat of the shared layer
            return {candidates[0][1]: 0.0}, [candidates[0][1]]
        if self.method == "ablation":
            _, by_unit = importance.ablation_scores(
                candidates, lambda: calibration_metric(pl_module, batches, self.calibration_metric),
                lambda unit: surgery.bypass(model, unit))
            scores = {unit[1]: value for unit, value in by_unit.items()}
            return scores, [importance.least_important(scores)]
        n = self.angular_n if self.method == "angular_distance" else 1
        room = surgery.num_layers(model) - (self.target_layers or 1)
        n = max(1, min(n, room))
        scores = dict(enumerate(hidden_state_scores(model, batches, self.method, n)))
        start = importance.least_important(scores)
        return scores, list(range(start, start + n))

    def _calibration_batches(self, trainer: pl.Trainer, pl_module) -> list[dict]:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise FinlightError("SuccessiveLayerDrop needs a data module for its calibration examples")
        loader = datamodule.val_dataloader() if self.calibration_split == "val" else datamodule.train_dataloader()
        return first_examples(loader, self.calibration_examples, pl_module.device)

    def _revert(self, trainer: pl.Trainer, pl_module: pl.LightningModule, value: float) -> None:
        restored = self._snapshot
        restored.train(pl_module.model.training)
        pl_module.model = restored.to(pl_module.device)
        self._snapshot = None
        self.finished = True
        trainer.should_stop = True
        rebuild_optimizers(trainer)  # the checkpoint written next holds optimizer state for these weights
        if self._snapshot_scores is not None:
            # the checkpoint callback runs after this one and files the restored weights under its monitored
            # metric: give it their own scores (measured when these weights were validated), not the pruned model's.
            # No public way: self.log is refused in on_validation_end, and the module's metrics only exist after
            # the callbacks' on_validation_epoch_end; so the trainer's metric dict is updated in place
            # (tests/test_lightning_internals.py fails loudly if ModelCheckpoint stops seeing such an update)
            trainer.callback_metrics.update(self._snapshot_scores)
        self.history.append({"epoch": trainer.current_epoch, "global_step": trainer.global_step, "reverted": True,
                             "monitor": self.monitor, "value": value, "best": self.best,
                             "layers_after": surgery.num_layers(restored),
                             "params_after": surgery.parameter_count(restored)})
        if self.granularity == "sublayer":
            self.history[-1]["sublayers_after"] = surgery.count_sublayers(restored)
        log.warning("layer drop: %s %.4f fell more than %.4g below its best %.4f: restored the %d-layer model "
                    "before the last drop and stopped", self.monitor, value, self.tolerance, self.best,
                    surgery.num_layers(restored))
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        folder = run_dir(trainer)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "layer_drop.json"), "w", encoding="utf-8") as handle:
            json.dump({"initial_params": self.initial_params, "drops": self.history}, handle, indent=2)


def _ranked(scores: dict) -> list:
    """The units of ``scores`` from the lowest score up (ties keep their order, as `importance.least_important`)."""
    return sorted(scores, key=scores.get)


def offloaded_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are in CPU memory.

    Why: the snapshot a revert may need would otherwise be a second copy of the weights on the GPU (14 GB for a
    7B model in bf16, next to the weights, gradients and optimizer states of full fine-tuning). Tied weights stay
    tied (copied once through the deepcopy memo); ``requires_grad`` is kept."""
    memo: dict = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in memo:
            continue
        data = tensor.detach().to("cpu", copy=True)
        memo[id(tensor)] = (torch.nn.Parameter(data, requires_grad=tensor.requires_grad)
                            if isinstance(tensor, torch.nn.Parameter) else data)
    return copy.deepcopy(model, memo)


def first_examples(loader, count: int, device) -> list[dict]:
    """The first ``count`` examples of ``loader`` as batches on ``device`` (the last one cut to size). Every
    per-example tensor is kept: a causal-LM classifier scores classes from its prompt views too."""
    batches, seen = [], 0
    for batch in loader:
        size = len(batch["labels"])
        take = min(count - seen, size)
        batches.append({k: v[:take].to(device) for k, v in batch.items()
                        if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == size})
        seen += take
        if seen >= count:
            break
    if not batches:
        raise FinlightError("SuccessiveLayerDrop: the calibration split is empty")
    return batches


@torch.no_grad()
def calibration_metric(pl_module, batches: list[dict], metric: str) -> float:
    """Higher is better: minus the mean cross-entropy, accuracy or macro-F1 over the calibration batches.

    The class scores are the module's own: a sequence classifier's logits, or for a causal-LM classifier
    (which has ``label_probs``: the label words' probabilities) their logarithm."""
    if hasattr(pl_module, "label_probs"):
        logits = torch.cat([pl_module.label_probs(b).float().clamp_min(1e-30).log() for b in batches])
    else:
        logits = torch.cat([pl_module(b["input_ids"], b["attention_mask"]).float() for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    if metric == "loss":
        return -float(torch.nn.functional.cross_entropy(logits, labels))
    k = logits.shape[-1]
    if metric == "acc":
        return float(multiclass_accuracy(logits, labels, num_classes=k, average="micro"))
    if metric == "macro_f1":
        return float(multiclass_f1_score(logits, labels, num_classes=k, average="macro"))
    raise FinlightError(f"SuccessiveLayerDrop.calibration_metric={metric!r}: use loss, acc or macro_f1")


@torch.no_grad()
def hidden_state_scores(model, batches: list[dict], method: str, n: int = 1) -> list[float]:
    """Per-layer block influence, or angular distance per block of ``n`` layers, over the calibration batches
    (each batch weighted by its number of real tokens)."""
    per_batch = []
    for batch in batches:
        mask = batch["attention_mask"]
        states = model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states
        if method == "block_influence":
            per_batch.append((importance.block_influences(states, mask), float(mask.sum())))
        else:
            per_batch.append((importance.angular_distances(states, n, mask), float(mask.sum())))
    units = len(per_batch[0][0])
    return [importance.weighted_mean((scores[u], w) for scores, w in per_batch) for u in range(units)]


def rebuild_optimizers(trainer: pl.Trainer) -> None:
    """New optimizer and scheduler over the remaining parameters (Lightning has no public reset), with each
    scheduler stepped to where the old one was, so warm-up and decay continue instead of restarting."""
    trainer.strategy.setup_optimizers(trainer)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for config in trainer.lr_scheduler_configs:
            done = trainer.global_step if config.interval == "step" else trainer.current_epoch
            for _ in range(done):
                config.scheduler.step()
