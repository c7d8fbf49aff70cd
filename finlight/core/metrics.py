"""Per-stage torchmetrics: accuracy, macro/weighted F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score,
                                         MulticlassPrecision, MulticlassRecall)


def classification_metrics(num_classes: int) -> MetricCollection:
    """The standard set for one stage. Per-class metrics return one value per class (``average=None``)."""
    k = num_classes
    return MetricCollection({
        "acc": MulticlassAccuracy(k, average="micro"),
        "macro_f1": MulticlassF1Score(k, average="macro"),
        "weighted_f1": MulticlassF1Score(k, average="weighted"),
        "precision": MulticlassPrecision(k, average=None),
        "recall": MulticlassRecall(k, average=None),
        "f1": MulticlassF1Score(k, average=None),
        "confusion": MulticlassConfusionMatrix(k),
    })


def flatten_metrics(values: dict[str, torch.Tensor], label_names: Sequence[str], stage: str) -> dict[str, float]:
    """Scalar metrics named ``stage/metric`` and ``stage/metric_<label>``; the confusion matrix is left out."""
    flat = {}
    for name, value in values.items():
        if name == "confusion":
            continue
        if value.ndim == 0:
            flat[f"{stage}/{name}"] = float(value)
        else:
            for label, v in zip(label_names, value.tolist()):
                flat[f"{stage}/{name}_{label}"] = float(v)
    return flat
