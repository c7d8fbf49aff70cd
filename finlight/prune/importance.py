"""Layer-importance scores: block influence, angular distance and ablation — pure functions.

* **Block influence** (ShortGPT, Men et al. 2024): ``1 − cos(x, f(x))`` between a layer's input and output
  hidden states, averaged over the real (non-padding) tokens of a batch. A layer that barely turns its input
  scores near 0 and is the first to drop.
* **Angular distance** (Gromov et al. 2024): ``arccos(cos(h_l, h_{l+n})) / π`` between the hidden states
  ``n`` layers apart, averaged over real tokens; the block of ``n`` layers starting at the smallest distance
  is the cheapest to remove. (The paper reads the last token only; a classifier pools over the sequence, so
  we average over every real token — pass a mask with only the last token set to get the paper's number.)
* **Ablation** (SAPLING / TrimLLM): the task metric on calibration data with one unit bypassed; the unit
  whose removal costs least is dropped. The model and the bypass are callables, so this stays model-agnostic.

No library computes these on Hugging Face hidden states with a padding mask, hence the few lines here.
Padding must be masked: a pad token's hidden state says nothing about the text, and batches padded to
different lengths would otherwise score the same layer differently.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Callable, Hashable, Iterable, Optional, Sequence

import torch


def _token_mask(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
    if mask.shape != hidden.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape[:-1])}")
    mask = mask.to(device=hidden.device).bool()
    if not mask.any():
        raise ValueError("the mask selects no token")
    return mask


def token_cosines(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cosine similarity of ``a`` and ``b`` ([batch, seq, hidden]) at each real token: a 1-D tensor."""
    if a.shape != b.shape:
        raise ValueError(f"hidden state shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    keep = _token_mask(a, mask)
    return torch.nn.functional.cosine_similarity(a[keep].double(), b[keep].double(), dim=-1)


def block_influence(inputs: torch.Tensor, outputs: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """1 − mean cosine between a layer's input and output hidden states over the real tokens."""
    return float(1.0 - token_cosines(inputs, outputs, mask).mean())


def angular_distance(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Mean over real tokens of arccos(cos(a, b)) / π, in [0, 1]."""
    cos = token_cosines(a, b, mask).clamp(-1.0, 1.0)
    return float((torch.arccos(cos) / math.pi).mean())


def block_influences(hidden_states: Sequence[torch.Tensor], mask: Optional[torch.Tensor] = None) -> list[float]:
    """Block influence of each layer from a model's ``hidden_states`` (embeddings, then each layer's output):
    ``len(hidden_states) − 1`` scores, layer ``i`` from states ``i`` → ``i + 1``."""
    return [block_influence(hidden_states[i], hidden_states[i + 1], mask) for i in range(len(hidden_states) - 1)]


def angular_distances(hidden_states: Sequence[torch.Tensor], n: int,
                      mask: Optional[torch.Tensor] = None) -> list[float]:
    """Angular distance of each block of ``n`` consecutive layers: entry ``l`` compares states ``l`` and
    ``l + n`` (the input of layer ``l`` and the output of layer ``l + n − 1``)."""
    layers = len(hidden_states) - 1
    if not 1 <= n <= layers:
        raise ValueError(f"n={n}: must be between 1 and the number of layers ({layers})")
    return [angular_distance(hidden_states[l], hidden_states[l + n], mask) for l in range(layers - n + 1)]


def weighted_mean(scores_and_weights: Iterable[tuple[float, float]]) -> float:
    """Combine per-batch scores into one, each weighted (e.g. by its number of real tokens)."""
    total = weight = 0.0
    for score, w in scores_and_weights:
        total += score * w
        weight += w
    if weight <= 0:
        raise ValueError("no weight: nothing was scored")
    return total / weight


def ablation_scores(units: Sequence[Hashable], evaluate: Callable[[], float],
                    bypass: Callable[[Hashable], AbstractContextManager]) -> tuple[float, dict]:
    """The metric with each unit bypassed, and the baseline with none.

    ``evaluate()`` returns the metric of the model as it stands on the N calibration examples (higher is
    better); ``bypass(unit)`` is a context manager inside which the model runs without ``unit``. Returns
    ``(baseline, {unit: baseline − metric without unit})``: the smallest score is the cheapest unit to drop
    (a negative score means the model does better without it).
    """
    baseline = float(evaluate())
    scores = {}
    for unit in units:
        with bypass(unit):
            scores[unit] = baseline - float(evaluate())
    return baseline, scores


def least_important(scores: dict) -> Hashable:
    """The unit with the lowest score (the first one among ties, so the choice is reproducible)."""
    if not scores:
        raise ValueError("no units to choose from")
    return min(scores, key=scores.get)
