"""An MLP classification head in place of a backbone's linear one (``model.head_hidden``).

Why: a method that grows a model (dendrites, adapters) should be compared with spending the same number of extra
parameters the ordinary way. ``head_hidden: H`` replaces the last linear layer that scores one logit per class
(BERT's ``classifier``, a decoder's ``score``, RoBERTa's ``classifier.out_proj``) by
``Linear(d, H) → GELU → Dropout → Linear(H, classes)``, initialised like the backbone's own layers (normal with
``config.initializer_range``, zero bias); `hidden_for_extra_parameters` gives the ``H`` that adds a given number
of parameters. The width is recorded in the backbone config (``finlight_head_hidden``), so a checkpoint rebuilds
the same head (`finlight.core.backbone.rebuild_backbone` calls `apply_recorded_head`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from finlight.errors import FinlightError

CONFIG_KEY = "finlight_head_hidden"


def head_name(model: nn.Module, num_classes: int) -> str:
    """Dotted name of the last ``nn.Linear`` with ``num_classes`` outputs: the layer that scores the classes."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise FinlightError(f"model.head_hidden: {type(model).__name__} has no linear layer with {num_classes} "
                            "outputs to replace by an MLP head; leave model.head_hidden unset")
    return names[-1]


def added_parameters(in_features: int, hidden: int, num_classes: int) -> int:
    """Parameters an MLP head of width ``hidden`` adds over the ``in_features → num_classes`` linear head."""
    return (in_features + 1) * hidden + (hidden + 1) * num_classes - (in_features + 1) * num_classes


def hidden_for_extra_parameters(extra: int, in_features: int, num_classes: int) -> int:
    """The width ``H`` whose MLP head adds closest to ``extra`` parameters (over the linear head)."""
    if extra <= 0:
        raise FinlightError(f"extra parameters {extra}: must be positive to size an MLP head")
    per_unit = in_features + 1 + num_classes
    base = (in_features + 1) * num_classes
    estimate = max(1, round((extra + base - num_classes) / per_unit))
    candidates = [h for h in (estimate - 1, estimate, estimate + 1) if h >= 1]
    return min(candidates, key=lambda h: abs(added_parameters(in_features, h, num_classes) - extra))


def install_mlp_head(model: nn.Module, hidden: int, num_classes: Optional[int] = None) -> str:
    """Replace ``model``'s linear class scorer by an MLP head of width ``hidden``; returns the replaced name.
    Records the width in ``model.config`` so checkpoints rebuild it."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise FinlightError(f"model.head_hidden={hidden!r}: use a whole number of hidden units >= 1, or leave it "
                            "unset for the backbone's linear head")
    config = getattr(model, "config", None)
    k = num_classes or int(getattr(config, "num_labels", 0) or 0)
    if k < 1:
        raise FinlightError("model.head_hidden: the backbone config has no num_labels; cannot find its head")
    name = head_name(model, k)
    old = model.get_submodule(name)
    dropout = float(getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1) or 0.0)
    std = float(getattr(config, "initializer_range", 0.02))
    head = nn.Sequential(nn.Linear(old.in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, k))
    with torch.no_grad():
        for layer in (head[0], head[3]):
            layer.weight.normal_(0.0, std)
            layer.bias.zero_()
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, head)
    if config is not None:
        setattr(config, CONFIG_KEY, int(hidden))
    return name


def recorded_hidden(model: nn.Module) -> Optional[int]:
    """The MLP head width recorded in ``model.config`` (None: the backbone's own linear head)."""
    value = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return int(value) if value is not None else None


def apply_recorded_head(model: nn.Module) -> nn.Module:
    """Rebuild the MLP head a checkpoint's config records (architecture only: the weights load afterwards)."""
    hidden = recorded_hidden(model)
    if hidden is not None:
        install_mlp_head(model, hidden)
    return model
