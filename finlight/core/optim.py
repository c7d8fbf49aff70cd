"""AdamW parameter groups and learning-rate schedules (transformers' schedulers, torch's StepLR)."""

from __future__ import annotations

from typing import Callable, Literal, Optional

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


def _fused_ok(groups: list[dict]) -> Optional[bool]:
    """``True`` (torch's fused AdamW) when every trainable tensor is a float on CPU or CUDA, else ``None`` (torch
    picks). On CPU the fused step is several times faster: MiniLM-L6's 22.7 M parameters on 2 cores, 0.76 s
    against 2.8 s for the default for-loop step, a third of a whole training step."""
    params = [p for group in groups for p in group["params"]]
    return True if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None


def fused_allowed(trainer) -> bool:
    """Fused AdamW unless the run has a gradient scaler (fp16 mixed precision): a fused step unscales scaled
    gradients itself, so clipping before it would clip scaled values. bf16 has no scaler; see `clip_gradients`."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    return getattr(plugin, "scaler", None) is None


def clip_gradients(module, optimizer, gradient_clip_val, gradient_clip_algorithm) -> None:
    """``configure_gradient_clipping`` of finlight's modules. Lightning's mixed-precision plugin refuses to clip
    for any fused optimizer, also under bf16, where no scaler exists and clipping is exactly as in fp32; there the
    clipping is done by the base ``Precision`` plugin (what ``32-true`` runs), elsewhere Lightning's own path."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    plugin = module.trainer.precision_plugin
    if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
        from lightning.pytorch.utilities import GradClipAlgorithmType

        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
        return
    module.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)


def adamw_with_schedule(model: nn.Module, hparams, total_steps: Callable[[], int], fused: bool = True) -> dict:
    """The Lightning optimizer config of finlight's modules: AdamW over the trainable weights (``adamw_param_groups``)
    with the schedule named in ``hparams`` (``learning_rate``, ``weight_decay``, ``scheduler``, ``warmup_ratio``,
    optional ``step_size`` / ``gamma``). ``total_steps`` is asked for only once there is something to train;
    ``fused=False`` keeps torch's default step (see `fused_allowed`)."""
    groups = adamw_param_groups(model, hparams.weight_decay)
    if not any(g["params"] for g in groups):
        raise FinlightError("nothing to train: every weight is frozen (a quantized backbone needs model.lora)")
    optimizer = torch.optim.AdamW(groups, lr=hparams.learning_rate, fused=_fused_ok(groups) if fused else None)
    scheduler = build_scheduler(optimizer, hparams.scheduler, total_steps(), hparams.warmup_ratio,
                                hparams.get("step_size", 1), hparams.get("gamma", 0.1))
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
