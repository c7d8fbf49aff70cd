"""Distillation losses as pure functions with fixed reductions (tested against hand-computed values)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from finlight.core.losses import weighted_cross_entropy


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(t/T) ‖ softmax(s/T)) · T²``: summed over classes, averaged over the batch ("batchmean").

    The T² factor keeps the soft term's gradient scale independent of T (Hinton et al., 2015), so one α works
    for T ∈ {2, 5, 9}. With T = 1 this is the plain average KL(teacher ‖ student) used as a diagnostic.
    """
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Vanilla KD: ``α · distillation_kl(s, t, T) + (1 − α) · weighted_cross_entropy(s, labels)``.

    α = 1 is pure soft-target training, α = 0 plain cross-entropy on ``labels`` (gold labels, or the
    teacher's hard labels on pseudo-labelled data). Both terms are batch means.
    """
    soft = distillation_kl(student_logits, teacher_logits, temperature)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * weighted_cross_entropy(student_logits, labels, class_weights)


def patient_kd_loss(
    student_cls: Sequence[torch.Tensor],
    teacher_cls: Sequence[torch.Tensor],
    beta: float = 1.0,
) -> torch.Tensor:
    """Patient KD (Sun et al., 2019): ``β · Σ_layers mean_batch ‖ s/‖s‖₂ − t/‖t‖₂ ‖²₂``.

    ``student_cls[j]`` and ``teacher_cls[j]`` are the ``[batch, hidden]`` [CLS] states of the j-th mapped layer
    pair (the student's already projected to the teacher's width). Reduction, fixed: squared L2 distance per
    example (summed over the hidden dimension, so each term lies in [0, 4]), averaged over the batch, summed
    over the mapped layers. The reference code uses ``mse_loss`` (a mean over batch × layers × hidden), so its
    β equals ours × (number of mapped layers × teacher hidden size): their β = 100 with 5 layers of 768 is
    β ≈ 0.026 here.
    """
    if len(student_cls) != len(teacher_cls) or not student_cls:
        raise ValueError(f"patient_kd_loss needs the same, non-zero number of student and teacher layers "
                         f"(got {len(student_cls)} and {len(teacher_cls)})")
    total = student_cls[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_cls, teacher_cls):
        if s.shape != t.shape:
            raise ValueError(f"patient_kd_loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}; project the "
                             f"student's hidden states to the teacher's width first")
        diff = F.normalize(s.float(), dim=-1) - F.normalize(t.float(), dim=-1)
        total = total + diff.pow(2).sum(dim=-1).mean()
    return beta * total
