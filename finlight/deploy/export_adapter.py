"""Export of adapter-only checkpoints (LoRA / quantized runs): a peft adapter directory, or merged weights.

The checkpoint holds only the trainable weights; the base comes back from the hub id or directory it was
trained on, in full precision (a QLoRA adapter is merged into the unquantized base, as the QLoRA recipe does).

* adapter (default): ``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer; load with
  ``peft.AutoPeftModelForCausalLM`` / ``AutoPeftModelForSequenceClassification`` (or ``PeftModel`` on the base).
* merged: ``merge_and_unload`` → a plain Hugging Face directory that loads without peft.
"""

from __future__ import annotations

import os
import tempfile

from finlight.errors import FinlightError


def rebuild_tokenizer(state: dict):
    """The exact tokenizer stored in a finlight checkpoint (pad token included)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in state["tokenizer_files"].items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        return AutoTokenizer.from_pretrained(tmp)


def adapter_model_from_checkpoint(checkpoint: dict, trust_remote_code: bool = False):
    """(peft model on the full-precision base with the checkpoint's adapter weights, tokenizer, task)."""
    from finlight.core.adapters import LoraOptions, apply_adapters, as_options, check_adapter_state

    info = checkpoint["finlight"]
    lora = as_options(info.get("lora"), LoraOptions)
    if lora is None:
        raise FinlightError("the checkpoint has no LoRA adapters (a quantized run without model.lora trained "
                            "nothing): there is nothing to export")
    task = info.get("task", "sequence-classification")
    if task in ("causal-lm", "finqa-generator"):
        from finlight.core.backbone import load_causal_pretrained

        model, _ = load_causal_pretrained(info["base"], "float32", trust_remote_code)
        model = apply_adapters(model, lora, None, False, "CAUSAL_LM")
    else:
        from finlight.core.backbone import load_pretrained

        model, _ = load_pretrained(info["base"], info["label_names"], trust_remote_code)
        model = apply_adapters(model, lora, None, False, "SEQ_CLS")
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    check_adapter_state(model, weights)
    model.load_state_dict(weights, strict=False)  # the frozen base came from info["base"]; adapters checked above
    return model.eval(), rebuild_tokenizer(info["backbone"]), task


def export_adapter(checkpoint: dict, output_dir: str, merged: bool = False, trust_remote_code: bool = False) -> str:
    model, tokenizer, task = adapter_model_from_checkpoint(checkpoint, trust_remote_code)
    if merged:
        model = model.merge_and_unload()
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
