"""Loss functions as pure functions with explicit reductions (testable against hand-computed values)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged over the batch, weighting each example by its class weight.

    Reduction: ``sum_i w[y_i] · ℓ_i / sum_i w[y_i]`` (PyTorch's weighted mean), so the loss scale does not
    depend on how the weights are normalised. With ``class_weights=None`` this is the plain mean.
    """
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing, reduction="mean")
