"""Where each module went when finlight moved from a layout by Lightning type to one by method (2026-12).

A config or import that names an old path gets a one-line hint to the new one (`hint_for`) instead of an
ImportError.
"""

from __future__ import annotations

import re
from typing import Optional

# old module → new module
MODULES = {
    "finlight.data.cleaning": "finlight.core.data.cleaning",
    "finlight.data.datamodule": "finlight.core.data.datamodule",
    "finlight.data.labels": "finlight.core.data.labels",
    "finlight.data.records": "finlight.core.data.records",
    "finlight.data.sources": "finlight.core.data.sources",
    "finlight.data.splits": "finlight.core.data.splits",
    "finlight.data.tokenization": "finlight.core.data.tokenization",
    "finlight.models.backbone": "finlight.core.backbone",
    "finlight.models.adapters": "finlight.core.adapters",
    "finlight.models.base": "finlight.core.base",
    "finlight.models.classifier": "finlight.core.classifier",
    "finlight.models.restore": "finlight.core.restore",
    "finlight.checkpoints": "finlight.core.checkpoints",
    "finlight.metrics": "finlight.core.metrics",
    "finlight.optim": "finlight.core.optim",
    "finlight.run_dir": "finlight.core.run_dir",
    "finlight.plots": "finlight.core.plots",
    "finlight.losses": "finlight.core.losses",
    "finlight.callbacks.checkpoint": "finlight.core.callbacks.checkpoint",
    "finlight.callbacks.evaluation_report": "finlight.core.callbacks.evaluation_report",
    "finlight.callbacks.prediction_writer": "finlight.core.callbacks.prediction_writer",
    "finlight.callbacks.rng_state": "finlight.core.callbacks.rng_state",
    "finlight.callbacks.collect": "finlight.core.callbacks.collect",
    "finlight.callbacks.threshold_sweep": "finlight.core.callbacks.threshold_sweep",
    "finlight.callbacks.latency": "finlight.core.callbacks.latency",
    "finlight.models.causal_lm": "finlight.causal_lm.classifier",
    "finlight.data.instruction": "finlight.causal_lm.data",
    "finlight.scoring": "finlight.causal_lm.scoring",
    "finlight.models.distillation": "finlight.distill.student",
    "finlight.models.teacher": "finlight.distill.teacher",
    "finlight.pseudo_label": "finlight.distill.pseudo_label",
    "finlight.data.pseudo_labelled": "finlight.distill.data",
    "finlight.dendrites": "finlight.dendrites.perforate",
    "finlight.models.dendritic": "finlight.dendrites.classifier",
    "finlight.callbacks.pai_tracker": "finlight.dendrites.tracker",
    "finlight.importance": "finlight.prune.importance",
    "finlight.surgery": "finlight.prune.surgery",
    "finlight.callbacks.layer_drop": "finlight.prune.layer_drop",
    "finlight.checkpoint_selection": "finlight.prune.checkpoint_selection",
    "finlight.compression": "finlight.quantize.ptq",
    "finlight.quantize": "finlight.quantize.dynamic_int8",
    "finlight.data.finqa": "finlight.finqa.data",
    "finlight.models.finqa_generator": "finlight.finqa.generator",
    "finlight.export": "finlight.deploy.export",
    "finlight.export_adapter": "finlight.deploy.export_adapter",
    "finlight.onnx_export": "finlight.deploy.onnx",
    "finlight.predictor": "finlight.deploy.predictor",
    "finlight.report": "finlight.report.compare",
    "finlight.seeds": "finlight.report.seeds",
}
# old class paths that a config names → new, shorter class paths
CLASSES = {
    "finlight.models.SequenceClassifier": "finlight.core.SequenceClassifier",
    "finlight.models.ScratchConfig": "finlight.core.ScratchConfig",
    "finlight.data.ClassificationDataModule": "finlight.core.ClassificationDataModule",
    "finlight.callbacks.latency.LatencyProfiler": "finlight.core.callbacks.LatencyProfiler",
    "finlight.callbacks.threshold_sweep.ThresholdSweep": "finlight.core.callbacks.ThresholdSweep",
    "finlight.callbacks.layer_drop.SuccessiveLayerDrop": "finlight.prune.SuccessiveLayerDrop",
    "finlight.callbacks.pai_tracker.PAITracker": "finlight.dendrites.PAITracker",
    "finlight.data.finqa.FinQADataModule": "finlight.finqa.FinQADataModule",
    "finlight.data.instruction.InstructionDataModule": "finlight.causal_lm.InstructionDataModule",
    "finlight.data.pseudo_labelled.PseudoLabelledDataModule": "finlight.distill.PseudoLabelledDataModule",
    "finlight.models.causal_lm.CausalLMClassifier": "finlight.causal_lm.CausalLMClassifier",
    "finlight.models.dendritic.DendriticClassifier": "finlight.dendrites.DendriticClassifier",
    "finlight.models.distillation.DistillationStudent": "finlight.distill.DistillationStudent",
    "finlight.models.finqa_generator.FinQAGenerator": "finlight.finqa.FinQAGenerator",
}

# old modules whose names are packages now: a path below them is a new path, never an old one
_NOW_PACKAGES = ("finlight.dendrites", "finlight.quantize", "finlight.report")
_DOTTED = re.compile(r"finlight(?:\.\w+)+")


def new_path(old: str) -> Optional[str]:
    """The current name of an old module or ``module.Class`` path, or None if ``old`` is not an old path."""
    if old in CLASSES:
        return CLASSES[old]
    for module in sorted(MODULES, key=len, reverse=True):
        if module in _NOW_PACKAGES:
            continue
        if old == module or old.startswith(module + "."):
            return MODULES[module] + old[len(module):]
    return None


def hint_for(text: str) -> Optional[str]:
    """The first old path in ``text`` (a config file or an argument) with its new name, as one sentence."""
    for match in _DOTTED.finditer(text):
        old = match.group(0)
        new = new_path(old)
        if new is not None:
            return f"{old!r} moved to {new!r} (finlight is organised by method now; see finlight/moved.py)"
    return None

