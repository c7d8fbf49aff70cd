"""``python -m finlight export --ckpt_path X --output_dir Y``: a Hugging Face directory from a checkpoint.

The checkpoint alone is enough (it carries the backbone config and tokenizer): no data, no hub.
"""

from __future__ import annotations

import os

from finlight.commands import run_command
from finlight.core.checkpoints import check_checkpoint_suits, load_checkpoint
from finlight.errors import FinlightError


def export_hf(ckpt_path: str, output_dir: str, trust_remote_code: bool = False, merged: bool = False) -> str:
    """A Hugging Face directory; for adapter-only (LoRA / quantized) checkpoints a peft adapter directory, or
    with ``merged`` the adapters merged into the full-precision base (see `finlight.deploy.export_adapter`)."""
    from finlight.core.restore import restore_from_checkpoint

    checkpoint = load_checkpoint(ckpt_path)
    if "finlight" not in checkpoint:
        raise FinlightError(f"{ckpt_path}: not a finlight checkpoint (no 'finlight' entry)")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FinlightError(f"{output_dir}: exists and is not empty; choose a new --output_dir")
    check_checkpoint_suits(checkpoint, ckpt_path)
    if "finlight_dendrites" in checkpoint:
        raise FinlightError(f"{ckpt_path}: a dendritic model is not a plain Hugging Face model (its layers carry "
                            f"perforatedai dendrites that AutoModel classes would silently drop); export it with "
                            f"python -m finlight export-onnx --ckpt_path {ckpt_path} --output_dir DIR (full-weight "
                            f"runs; a LoRA / 4-bit dendritic run is used through validate/test/predict)")
    if (checkpoint["finlight"].get("backbone") or {}).get("config", {}).get("finlight_head_hidden") is not None:
        raise FinlightError(f"{ckpt_path}: a model.head_hidden (MLP head) model is not a plain Hugging Face model "
                            f"(AutoModel classes would replace its head by a random linear one); export it with "
                            f"python -m finlight export-onnx --ckpt_path {ckpt_path} --output_dir DIR")
    if checkpoint["finlight"].get("adapter_only"):
        from finlight.deploy.export_adapter import export_adapter

        return export_adapter(checkpoint, output_dir, merged, trust_remote_code)
    model, tokenizer, _, _ = restore_from_checkpoint(ckpt_path, trust_remote_code, checkpoint)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def export_command(ckpt_path: str, output_dir: str, trust_remote_code: bool = False, merged: bool = False) -> str:
    """Export a finlight checkpoint as a Hugging Face directory.

    Args:
        ckpt_path: the finlight checkpoint (.ckpt).
        output_dir: a new or empty folder for the export.
        trust_remote_code: run the backbone repository's own code (off unless you trust it).
        merged: LoRA checkpoints: merge the adapters into the base (default: a peft adapter directory).
    """
    out = export_hf(ckpt_path, output_dir, trust_remote_code, merged)
    adapter = os.path.isfile(os.path.join(out, "adapter_config.json"))
    kind = "a peft adapter: load with peft's AutoPeftModel classes" if adapter else "load with AutoModelFor* classes"
    print(f"finlight: exported {ckpt_path} to {out} ({kind})")
    return out


def export_main(argv: list[str]) -> str:
    return run_command(export_command, argv, "export")
