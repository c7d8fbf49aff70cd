"""Post-training quantization baselines of a fine-tuned classifier (an exported Hugging Face directory).

* `load_bnb` — bitsandbytes 4-bit (NF4 / FP4) or 8-bit (LLM.int8) weights at load time; no data needed.
  Works on CUDA, and on this CPU build for widths divisible by 32 (heads are kept in full precision).
* `gptq_quantize` — GPTQ 4-bit through transformers' ``GPTQConfig`` (optimum.gptq + gptqmodel kernels),
  calibrated on texts of the training split (`split_texts`), block by block over the layer stack that
  `finlight.prune.surgery` knows (decoders' ``model.layers``, BERT-style ``encoder.layer``). Runs on CPU with
  gptqmodel 7.6 (the optional ``gptq`` extra); its C++ kernels are built on first use (~40–100 s, cached).
* dynamic INT8 for CPU inference lives in `finlight.quantize.dynamic_int8`.

``python -m finlight quantize --model_dir EXPORT --method {bnb4,bnb8,gptq4} --output_dir OUT
[--config configs/X.yaml --calibration_examples 128]`` writes a quantized directory that
``from_pretrained`` (and ``benchmarks/compression_report.py``) load back.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

from finlight.commands import run_command
from finlight.errors import FinlightError
from finlight.core.adapters import SEQUENCE_HEADS, QuantizationOptions, portable_4bit, quantized_load_kwargs
from finlight.core.removals import removal_aware_load

METHODS = ("bnb4", "bnb8", "gptq4")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_dir(path: str) -> Path:
    """A saved Hugging Face model directory (``python -m finlight export`` makes one from a checkpoint)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FinlightError(f"--model_dir {path}: not a saved Hugging Face model (no config.json); export a "
                            "checkpoint first: python -m finlight export --ckpt_path CKPT --output_dir DIR")
    return folder


def auto_class(model_dir: str):
    """``AutoModelForCausalLM`` for a saved causal LM (the label-word classifiers of `CausalLMClassifier`),
    else ``AutoModelForSequenceClassification``."""
    import transformers

    config = json.loads((Path(model_dir) / "config.json").read_text())
    causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    return transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSequenceClassification


def load_bnb(model_dir: str, bits: int = 4, quant_type: str = "nf4", double_quant: bool = True,
             compute_dtype: str = "bfloat16", device: Optional[torch.device] = None):
    """(model in eval mode with bitsandbytes weights, tokenizer) from a saved classifier directory."""
    from transformers import AutoTokenizer

    folder = check_model_dir(model_dir)
    options = QuantizationOptions(bits=bits, quant_type=quant_type, double_quant=double_quant,
                                  compute_dtype=compute_dtype)
    # a causal LM's lm_head is tied to the embeddings (SmolLM2, Llama-3.2): bitsandbytes cannot quantize a tied weight
    # (8-bit: "'Parameter' object has no attribute 'CB'", 4-bit: an AssertionError at the first forward), so it stays
    # in full precision like the classification heads
    causal = auto_class(folder).__name__ == "AutoModelForCausalLM"
    kwargs = quantized_load_kwargs(options, device or default_device(),
                                   [*SEQUENCE_HEADS, "lm_head"] if causal else SEQUENCE_HEADS)
    try:
        with removal_aware_load(model_dir):
            model = auto_class(folder).from_pretrained(folder, dtype=torch.float32, **kwargs)
    except (RuntimeError, ValueError) as err:
        raise FinlightError(f"{model_dir}: bitsandbytes {bits}-bit load failed: {str(err).splitlines()[0][:300]}"
                            " (on CPU, 4-bit needs layer widths divisible by 32)") from None
    return portable_4bit(model).eval(), AutoTokenizer.from_pretrained(folder)


def config_datamodule(config_path: str, stage: str = "fit"):
    """(the data module ``config_path``'s data section builds, set up for ``stage``, its ``data.init_args``)."""
    import importlib

    import yaml

    if not Path(config_path).is_file():
        raise FinlightError(f"--config {config_path}: no such file")
    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    try:
        init_args = dict(config["data"]["init_args"])
    except (KeyError, TypeError):
        raise FinlightError(f"{config_path}: no data.init_args section to build the data splits from") from None
    module, _, name = config["data"].get("class_path", "finlight.core.ClassificationDataModule").rpartition(".")
    datamodule = getattr(importlib.import_module(module), name)(**init_args)  # e.g. InstructionDataModule
    datamodule.setup(stage)
    return datamodule, init_args


def split_texts(config_path: str, split: str = "train") -> tuple[list[str], list[int], int]:
    """Texts, label indices and ``max_length`` of one split made by ``config_path``'s data section (same
    path, ratios and seed as the runs trained with it)."""
    datamodule, init_args = config_datamodule(config_path, "fit" if split in ("train", "val") else "test")
    return ([r.text for r in datamodule.splits[split]], list(datamodule.labels[split]),
            int(init_args.get("max_length", 128)))


def prompt_spec(config_path: str) -> Optional[dict]:
    """How ``config_path``'s `InstructionDataModule` renders prompts (instruction, template, chat template or not,
    label words, answer prefix) as plain values for `finlight.causal_lm.data.PromptRenderer`; None for a data
    module without prompts (a sequence classifier's). Plain values, so a spawned process can rebuild the renderer
    with each variant's own tokenizer."""
    datamodule, _ = config_datamodule(config_path, "test")
    if not hasattr(type(datamodule), "renderer"):
        return None
    return {"instruction": datamodule.instruction, "template": datamodule.template,
            "use_chat_template": datamodule.use_chat_template, "label_words": list(datamodule.label_words),
            "answer_prefix": datamodule.answer_prefix}


def calibration_sample(texts: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """``count`` texts drawn without replacement (all of them when there are fewer), reproducibly."""
    if not texts:
        raise FinlightError("GPTQ calibration: the training split is empty")
    texts = list(texts)
    return texts if count >= len(texts) else random.Random(seed).sample(texts, count)


def _gptq_environment() -> None:
    """gptqmodel reads these at import: on a small CPU machine its default worker count oversubscribes."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 1)))
    try:
        import gptqmodel  # noqa: F401
        import optimum.gptq  # noqa: F401
    except ImportError:
        raise FinlightError("GPTQ needs gptqmodel and optimum: pip install -c constraints.txt -e '.[gptq]'") from None


def block_name(model_dir: str) -> str:
    """Dotted name of the model's stack of layers (``model.layers``, ``bert.encoder.layer``...): GPTQ
    quantizes block by block, and optimum only guesses decoder names by itself."""
    from transformers import AutoConfig

    from finlight.prune import surgery

    with torch.device("meta"), removal_aware_load(model_dir):  # the module tree only, no weights
        skeleton = auto_class(model_dir).from_config(AutoConfig.from_pretrained(model_dir))
    layers = surgery.layer_list(skeleton)
    return next(name for name, module in skeleton.named_modules() if module is layers)


def gptq_quantize(model_dir: str, output_dir: str, calibration: Sequence[str], bits: int = 4,
                  group_size: int = 128, desc_act: bool = False, device: Optional[torch.device] = None) -> Path:
    """GPTQ-quantize a saved classifier (sequence-classification or causal-LM label-word model) with
    ``calibration`` texts; save it to ``output_dir``."""
    from transformers import AutoTokenizer, GPTQConfig

    folder = check_model_dir(model_dir)
    if not calibration:
        raise FinlightError("GPTQ calibration: no texts")
    _gptq_environment()
    device = device or default_device()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = GPTQConfig(bits=bits, dataset=list(calibration), tokenizer=tokenizer, group_size=group_size,
                        desc_act=desc_act, block_name_to_quantize=block_name(str(folder)))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    place = (device.index or 0) if device.type == "cuda" else "cpu"
    try:
        with removal_aware_load(model_dir):
            model = auto_class(folder).from_pretrained(folder, quantization_config=config, device_map={"": place},
                                                       dtype=dtype)
    except (RuntimeError, ValueError) as err:
        raise FinlightError(f"{model_dir}: GPTQ failed: {str(err).splitlines()[0][:300]} (group_size must "
                            "divide every quantized layer's input width)") from None
    saved = model.config.quantization_config
    saved.dataset = None  # the calibration texts would otherwise be copied into config.json
    saved.block_name_to_quantize = config.block_name_to_quantize  # optimum forgets it; reloading needs it
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "gptq_calibration.json").write_text(json.dumps(
        {"source": str(folder), "bits": bits, "group_size": group_size, "desc_act": desc_act,
         "calibration_examples": len(calibration)}, indent=2))
    return out


def load_quantized_dir(model_dir: str, device: Optional[torch.device] = None):
    """(model in eval mode, tokenizer) from a directory `gptq_quantize` or ``save_pretrained`` of a
    bitsandbytes model wrote: the quantization config in ``config.json`` is applied at load."""
    from transformers import AutoTokenizer

    folder = check_model_dir(model_dir)
    config = json.loads((folder / "config.json").read_text())
    kwargs = {"dtype": torch.float32}
    if config.get("quantization_config"):  # GGUF-dequantized models save "quantization_config": null
        device = device or default_device()
        if config["quantization_config"].get("quant_method") == "gptq":
            _gptq_environment()
            kwargs["dtype"] = torch.float16 if device.type == "cuda" else torch.float32
        kwargs["device_map"] = {"": (device.index or 0) if device.type == "cuda" else "cpu"}
    with removal_aware_load(model_dir):
        model = auto_class(folder).from_pretrained(folder, **kwargs)
    return portable_4bit(model).eval(), AutoTokenizer.from_pretrained(folder)


GroupSize = restricted_number_type("GroupSize", int, [("==", -1), (">", 0)], join="or",
                                   docstring="GPTQ group size: a positive int, or -1 for one group per column")


def quantize_command(model_dir: str, method: Literal[METHODS], output_dir: str, config: Optional[str] = None,
                     calibration_examples: PositiveInt = 128, group_size: GroupSize = 128,
                     seed: NonNegativeInt = 0) -> Path:
    """Post-training quantization of an exported classifier.

    Args:
        model_dir: a Hugging Face directory (python -m finlight export).
        method: bnb4 / bnb8 (bitsandbytes at load time) or gptq4 (GPTQ, calibrated).
        output_dir: a new or empty folder for the quantized model.
        config: for gptq4: the training config whose train split gives calibration texts.
        calibration_examples: gptq4: how many training texts calibrate.
        group_size: gptq4: weights per quantization group (-1: one group per column).
        seed: which calibration texts are drawn.
    """
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FinlightError(f"--output_dir {output_dir}: exists and is not empty; choose a new folder")
    if method == "gptq4":
        if not config:
            raise FinlightError("quantize --method gptq4 needs --config (its train split gives calibration texts)")
        texts, _, _ = split_texts(config, "train")
        out = gptq_quantize(model_dir, output_dir, calibration_sample(texts, calibration_examples, seed),
                            group_size=group_size)
    else:
        model, tokenizer = load_bnb(model_dir, bits=4 if method == "bnb4" else 8)
        out = Path(output_dir)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    print(f"finlight quantize: {method} of {model_dir} → {out}")
    return out


def quantize_main(argv: list[str]) -> Path:
    return run_command(quantize_command, argv, "quantize", config_option="--settings")
