"""A trained finlight classifier back from its checkpoint file alone (no data, no hub, no Lightning)."""

from __future__ import annotations

from finlight.core.checkpoints import load_checkpoint
from finlight.errors import FinlightError


def restore_from_checkpoint(path: str, trust_remote_code: bool = False, checkpoint: dict | None = None):
    """(Hugging Face model with the trained weights, its tokenizer, label names, the checkpoint dict).

    Works for every full-weight finlight checkpoint (encoder or causal-LM classifier, distilled student); an
    adapter-only checkpoint (LoRA / quantized run) holds no base weights and is refused with a pointer to
    ``python -m finlight export``. Every problem is one `FinlightError` line that starts with ``path``.
    """
    from finlight.core.backbone import rebuild_backbone
    from finlight.core.classifier import CHECKPOINT_KEY, check_state_dict_fits

    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    info = checkpoint.get(CHECKPOINT_KEY)
    if info is None:
        raise FinlightError(f"{path}: not a finlight checkpoint (no 'finlight' entry)")
    if "finlight_dendrites" in checkpoint:  # perforatedai modules in the backbone: rebuilt with their dendrites
        from finlight.dendrites.classifier import restore_dendritic

        model, tokenizer = restore_dendritic(path, checkpoint, trust_remote_code)
        return model, tokenizer, list(info["label_names"]), checkpoint
    if info.get("adapter_only"):
        raise FinlightError(f"{path}: holds only LoRA/quantized trainable weights; export it first "
                            f"(python -m finlight export --ckpt_path {path} --output_dir DIR [--merged])")
    causal_lm = info.get("task") in ("causal-lm", "finqa-generator")
    model, tokenizer = rebuild_backbone(info["backbone"], trust_remote_code, causal_lm=causal_lm)
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        check_state_dict_fits(model.state_dict(), weights)
    except FinlightError as err:
        raise FinlightError(f"{path}: {err}") from None
    model.load_state_dict(weights)
    return model, tokenizer, list(info["label_names"]), checkpoint
