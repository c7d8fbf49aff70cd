"""Backbone options shared by every module: LoRA (peft), 4-/8-bit weights (bitsandbytes), gradient checkpointing.

The order matters and lives here once: load with ``quantization_config`` + ``device_map`` (quantized weights are
placed at load time) → ``prepare_model_for_kbit_training`` (or plain gradient checkpointing) → ``get_peft_model``
→ `keep_in_place`, so Lightning's later ``.to(device)`` / precision casts never touch the quantized model.
A run with LoRA or quantization checkpoints only its trainable weights (`trainable_state_dict`); the frozen base
is reloaded from its hub id or directory, and a full Hugging Face directory is an export.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from finlight.errors import FinlightError

log = logging.getLogger("finlight.models")

# The seven Llama / Mistral / Qwen projections (attention q, k, v, o and the gated MLP).
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Heads that stay in full precision: their widths (num_labels) break 4-bit kernels and they are trained.
SEQUENCE_HEADS = ["classifier", "score", "pooler"]
CAUSAL_HEADS = ["lm_head"]


@dataclass
class LoraOptions:
    """LoRA adapters through peft.

    Args:
        r / alpha / dropout: rank, scaling numerator (scale = alpha / r) and dropout on the adapter input.
        target_modules: module names (e.g. the seven Llama projections, see `LLAMA_PROJECTIONS`) or
            ``all-linear`` (every linear layer except the output head).
        bias: ``none`` | ``all`` | ``lora_only`` — which biases train.
        modules_to_save: extra modules trained in full (a sequence-classification head is added by peft).
    """

    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: float = 0.05
    target_modules: Union[str, list[str]] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: Optional[list[str]] = None


@dataclass
class QuantizationOptions:
    """Frozen base weights in 4 bits (NF4 / FP4, QLoRA) or 8 bits (LLM.int8) through bitsandbytes.

    Args:
        bits: 4 or 8.
        quant_type: ``nf4`` (normal-float, the QLoRA default) or ``fp4`` (4-bit only).
        double_quant: also quantize the quantization constants (4-bit only; ~0.4 bit/parameter saved).
        compute_dtype: dtype of the 4-bit matmuls (``bfloat16`` on Ampere+ GPUs and recent CPUs).
        skip_modules: modules kept in full precision besides the output heads, which always are.
    """

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    skip_modules: Optional[list[str]] = None


def as_options(value: Any, cls: type, owner: str = "") -> Any:
    """A dataclass from a dataclass, a dict (jsonargparse / checkpoint hparams) or None; ``owner`` prefixes
    the error (``PhaseSwitch: Phase: …``)."""
    if value is None or isinstance(value, cls):
        return value
    where = f"{owner}: {cls.__name__}" if owner else cls.__name__
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise FinlightError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise FinlightError(f"{where}: expected a mapping, got {type(value).__name__}")


def options_dict(value: Any) -> Optional[dict]:
    """Plain data for ``hparams`` (checkpoints load with ``weights_only=True``: no dataclass objects)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def validate_options(lora: Optional[LoraOptions], quantization: Optional[QuantizationOptions]) -> None:
    """Every bad value in one message (at construction, before any weights load)."""
    problems = []
    if lora is not None:
        if lora.r < 1:
            problems.append(f"model.lora.r={lora.r} must be ≥ 1")
        if lora.alpha <= 0:
            problems.append(f"model.lora.alpha={lora.alpha} must be > 0")
        if not 0.0 <= lora.dropout < 1.0:
            problems.append(f"model.lora.dropout={lora.dropout} must be in [0, 1)")
        if isinstance(lora.target_modules, str) and lora.target_modules != "all-linear":
            problems.append(f"model.lora.target_modules={lora.target_modules!r}: give a list of module names "
                            f"or 'all-linear'")
    if quantization is not None:
        if quantization.bits not in (4, 8):
            problems.append(f"model.quantization.bits={quantization.bits}: use 4 or 8")
        if quantization.quant_type not in ("nf4", "fp4"):
            problems.append(f"model.quantization.quant_type={quantization.quant_type!r}: use nf4 or fp4")
        if quantization.compute_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"model.quantization.compute_dtype={quantization.compute_dtype!r}: use float32, "
                            f"bfloat16 or float16")
    if problems:
        raise FinlightError("; ".join(problems))


def quantized_load_kwargs(quantization: QuantizationOptions, device: torch.device,
                          heads: Sequence[str]) -> dict:
    """``from_pretrained`` kwargs: a ``BitsAndBytesConfig`` and a ``device_map`` that puts every weight on
    ``device`` at load time (bitsandbytes quantizes while placing; moving afterwards is not supported)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise FinlightError("model.quantization needs bitsandbytes: pip install -e '.[lora]'") from None
    q = quantization
    skip = list(dict.fromkeys(list(heads) + list(q.skip_modules or [])))
    config = BitsAndBytesConfig(
        load_in_4bit=q.bits == 4, load_in_8bit=q.bits == 8,
        bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype), llm_int8_skip_modules=skip,
    )
    if device.type == "cuda":
        place = device.index if device.index is not None else torch.cuda.current_device()
    else:
        place = device.type
    return {"quantization_config": config, "device_map": {"": place}}


def portable_4bit(model: nn.Module) -> nn.Module:
    """Keep bitsandbytes 4-bit layers in the one weight layout every CPU (and GPU) computes the same way.

    Why: bitsandbytes ≥ 0.48 on a CPU with AVX-512 BF16 repacks a ``Linear4bit`` weight *in place* into a CPU
    inference layout the first time it runs in eval mode without grad (``_convert_weight_packed_for_cpu``: absmax
    cast to bf16, another kernel). Training after that raises "a view of a leaf Variable that requires grad is
    being used in an in-place operation", and the numbers differ from the AVX2 path (its inverse, run on save,
    does not restore the fp32 absmax: reloads moved logits by ~1e-3). bitsandbytes has no option for this; the
    per-layer flag ``support_avx512bf16_for_cpu`` it reads in ``forward`` is the switch, so it goes off here on
    every 4-bit layer finlight loads. The cost is speed, not accuracy: the unpacked kernel is what AVX2 CPUs and
    every training step use anyway.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def apply_adapters(model: nn.Module, lora: Optional[LoraOptions], quantization: Optional[QuantizationOptions],
                   gradient_checkpointing: bool, task_type: Literal["SEQ_CLS", "CAUSAL_LM"]) -> nn.Module:
    """Make a loaded backbone trainable the QLoRA way; returns the (possibly peft-wrapped) model."""
    checkpointing_kwargs = {"use_reentrant": False}
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # freezes the base, casts norms/heads to fp32, enables input grads (+ checkpointing if asked)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing_kwargs)
    elif gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.2x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    if gradient_checkpointing and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, bias=lora.bias,
                            modules_to_save=lora.modules_to_save, task_type=task_type)
        try:
            model = get_peft_model(model, config)
        except ValueError as err:  # e.g. target modules not found
            raise FinlightError(f"model.lora: {str(err).splitlines()[0][:300]}") from None
        trainable, total = count_parameters(model)
        log.info("LoRA r=%d alpha=%s on %s: %s of %s parameters trainable (%.2f%%)", lora.r, lora.alpha,
                 lora.target_modules, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def keep_in_place(model: nn.Module) -> nn.Module:
    """Make ``model`` ignore ``.to()`` / ``.float()`` / ``.half()`` from its parents.

    Why: Lightning moves and casts the whole LightningModule (``strategy.model_to_device``, ``*-true``
    precision); bitsandbytes weights were placed by ``device_map`` at load time and must stay as they are.
    ``nn.Module`` has no switch for this, so the instance's ``_apply`` (which every such call recurses
    through) becomes a no-op.
    """
    model._apply = types.MethodType(lambda self, fn, recurse=True: self, model)
    return model


def is_checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on, under either transformers name."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as stored elements."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_keys(module: nn.Module) -> set[str]:
    """State-dict names of the parameters that train (LoRA matrices, heads in ``modules_to_save``)."""
    return {name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}


def trainable_state_dict(module: nn.Module, state_dict: Optional[dict] = None) -> dict:
    """Only the trainable entries of ``state_dict`` (default: the module's own): what an adapter checkpoint
    stores. The frozen base comes back from its source, so the checkpoint is megabytes, not gigabytes."""
    keys = trainable_keys(module)
    state_dict = module.state_dict() if state_dict is None else state_dict
    return {k: v for k, v in state_dict.items() if k in keys}


def check_adapter_state(module: nn.Module, found: dict) -> None:
    """The checkpoint's weights must be exactly this module's trainable weights (names and shapes)."""
    from finlight.core.checkpoints import check_state_dict_fits

    expected = {k: v for k, v in module.state_dict().items() if k in trainable_keys(module)}
    check_state_dict_fits(expected, found, "the adapter checkpoint", " (same lora/quantization options?)")
