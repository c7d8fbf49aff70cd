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


def answer_only_lm_loss(logits: torch.Tensor, lm_labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens only: the mean over every position whose label is not
    ``ignore_index`` (prompt and padding are), pooled over the batch (a token mean, as Hugging Face's causal-LM
    loss). ``logits[:, t]`` predicts ``lm_labels[:, t + 1]``.
    """
    shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = lm_labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted, targets, ignore_index=ignore_index, reduction="mean")


def answer_prediction_mask(lm_labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """[batch, T] bool: the positions whose next token is an answer token, i.e. the only logits
    `answer_only_lm_loss` reads (``logits[:, t]`` predicts ``lm_labels[:, t + 1]``; the last position predicts
    nothing)."""
    mask = torch.zeros_like(lm_labels, dtype=torch.bool)
    mask[:, :-1] = lm_labels[:, 1:] != ignore_index
    return mask
