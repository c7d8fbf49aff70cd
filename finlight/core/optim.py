"""AdamW parameter groups and learning-rate schedules (transformers' schedulers, torch's StepLR)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from finlight.errors import FinlightError

Schedule = Literal["linear", "cosine", "constant", "step"]


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (the BERT recipe).

    Each parameter appears once: tied weights (a decoder's input embedding and output layer) belong to two
    modules, and listed twice AdamW would update them twice per step."""
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()
            (no_decay if name == "bias" or is_norm else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int, warmup_ratio: float,
                    step_size: int = 1, gamma: float = 0.1) -> dict:
    """A Lightning ``lr_scheduler`` dict. Warm-up schedules step per optimizer step; ``step`` per epoch."""
    from transformers import get_scheduler

    if schedule == "step":
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma),
                "interval": "epoch"}
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[schedule]
    warmup = int(round(warmup_ratio * total_steps))
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return {"scheduler": scheduler, "interval": "step"}


def adamw_with_schedule(model: nn.Module, hparams, total_steps: Callable[[], int]) -> dict:
    """The Lightning optimizer config of finlight's modules: AdamW over the trainable weights (``adamw_param_groups``)
    with the schedule named in ``hparams`` (``learning_rate``, ``weight_decay``, ``scheduler``, ``warmup_ratio``,
    optional ``step_size`` / ``gamma``). ``total_steps`` is asked for only once there is something to train."""
    groups = adamw_param_groups(model, hparams.weight_decay)
    if not any(g["params"] for g in groups):
        raise FinlightError("nothing to train: every weight is frozen (a quantized backbone needs model.lora)")
    optimizer = torch.optim.AdamW(groups, lr=hparams.learning_rate)
    scheduler = build_scheduler(optimizer, hparams.scheduler, total_steps(), hparams.warmup_ratio,
                                hparams.get("step_size", 1), hparams.get("gamma", 0.1))
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
