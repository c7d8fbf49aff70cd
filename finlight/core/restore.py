"""A trained finlight classifier back from its checkpoint file alone (no data, no hub, no Lightning)."""

from __future__ import annotations

from finlight.core.checkpoints import check_state_dict_fits, import_class, load_checkpoint
from finlight.errors import FinlightError


def restore_from_checkpoint(path: str, trust_remote_code: bool = False, checkpoint: dict | None = None):
    """(Hugging Face model with the trained weights, its tokenizer, label names, the checkpoint dict).

    Works for every full-weight finlight checkpoint (encoder or causal-LM classifier, distilled student; a module
    class whose model is more than a Hugging Face model — dendrites — rebuilds it with its ``restore_hf_model``);
    an adapter-only checkpoint (LoRA / quantized run) holds no base weights and is refused with a pointer to
    ``python -m finlight export``. Every problem is one `FinlightError` line that starts with ``path``.
    """
    from finlight.core.backbone import rebuild_backbone
    from finlight.core.base import CHECKPOINT_KEY

    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    info = checkpoint.get(CHECKPOINT_KEY)
    if info is None:
        raise FinlightError(f"{path}: not a finlight checkpoint (no 'finlight' entry)")
    own = _writer_restore(checkpoint)
    if own is not None:
        model, tokenizer = own(path, checkpoint, trust_remote_code)
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


def _writer_restore(checkpoint: dict):
    """The ``restore_hf_model`` of the finlight module class that wrote the checkpoint (recorded in its
    ``finlight`` entry, or the CLI's ``_class_path`` for older checkpoints), or None. A registry without import
    side effects: core names no method package; only ``finlight.*`` classes are imported."""
    class_path = checkpoint["finlight"].get("written_by") or \
        (checkpoint.get("hyper_parameters") or {}).get("_class_path") or ""
    cls = import_class(class_path) if class_path.startswith("finlight.") else None
    return getattr(cls, "restore_hf_model", None)
