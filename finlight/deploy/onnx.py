"""``python -m finlight export-onnx --model exported/X --output_dir onnx/X [--int8]``: ONNX for deployment.

``torch.onnx.export`` (optimum-onnx cannot live beside transformers 5) with dynamic batch and sequence axes,
then a check: onnxruntime's logits must match torch's within ``--atol`` on padded batches of other shapes than
the one traced, or the export fails. ``--int8`` adds ``model.int8.onnx`` by one of `INT8_RECIPES`
(``--int8_recipe``; the default, ``weight-only``, stores the MatMul weights in 8 bits per block of 32 and keeps
the activations fp32: measured on a fine-tuned MiniLM it kept 99.9 % of the fp32 decisions, where onnxruntime's
dynamic quantisation kept 96.6–98.7 %), reported with its logit error and argmax agreement against torch;
``--int8_compare texts.txt`` measures every recipe on those texts into the manifest's ``int8_options``. ``--optimize``
(the default for BERT-family models; ``--no_optimize`` turns it off) exports eager attention through the
TorchScript exporter and runs onnxruntime's transformer optimizer on it: one fused Attention kernel per layer,
fused embeddings + LayerNorm, residual + LayerNorm and bias + GELU; the fused graph goes through the same
check. The output folder also holds the tokenizer, ``config.json`` (label names) and ``finlight_onnx.json`` (the checks), so
`finlight.deploy.predictor.Predictor` serves it without Lightning or torch.

The source is a Hugging Face directory (``python -m finlight export``) or a finlight checkpoint (``.ckpt``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt

from finlight.commands import run_command
from finlight.core.first_token import first_token_only, target_layer
from finlight.errors import FinlightError

log = logging.getLogger("finlight.onnx")
MANIFEST = "finlight_onnx.json"
BERT_FAMILY = ("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "deberta", "mpnet")
# Sentences of varied length written for this check (padding inside batches is part of what is checked).
CHECK_TEXTS = [
    "Profit rose.",
    "The company raised its full-year guidance after strong orders in the third quarter.",
    "Net sales decreased by 12 % to EUR 31.5 million, and the operating loss widened compared with a year earlier.",
    "Shares were unchanged.",
    "The board will propose a dividend of EUR 0.40 per share for the financial year, up from EUR 0.35 a year ago.",
    "Layoffs are expected.",
]


class LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) → logits``: the graph a deployed classifier needs, nothing else."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@contextlib.contextmanager
def _quiet():
    """The exporters and the quantiser log progress and advice (torchvision absent, "consider pre-processing")
    at WARNING on the root and torch loggers; keep the console to finlight's own summary."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch"),
               logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]  # its own INFO handler
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_source(source: str, trust_remote_code: bool = False):
    """A classifier and its tokenizer from a Hugging Face directory or a finlight checkpoint."""
    if os.path.isdir(source):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from finlight.core.removals import removal_aware_load

        if not os.path.isfile(os.path.join(source, "config.json")):
            raise FinlightError(f"{source}: no config.json; give a Hugging Face model directory "
                                f"(python -m finlight export) or a .ckpt file")
        with removal_aware_load(source):  # a pruned export's recorded attention / MLP removals
            model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32,
                                                                       trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source)
        return model, tokenizer
    from finlight.core.restore import restore_from_checkpoint

    model, tokenizer, _, _ = restore_from_checkpoint(source, trust_remote_code)
    return model, tokenizer


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}


def _torch_logits(wrapper: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return wrapper(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])).numpy()


def _session(path: str, threads: Optional[int] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare_with_torch(wrapper: torch.nn.Module, onnx_path: str, tokenizer, texts: Sequence[str],
                       max_length: int) -> dict:
    """Logit error and argmax agreement of an ONNX file against torch, on the whole text list as one padded
    batch, on single texts (batch 1, unpadded) and on pairs (other batch and sequence sizes than traced)."""
    session = _session(onnx_path)
    batches = [list(texts)] + [[t] for t in texts] + [list(texts[i:i + 2]) for i in range(0, len(texts), 2)]
    worst, agree, total = 0.0, 0, 0
    for chunk in batches:
        batch = _encode(tokenizer, chunk, max_length)
        expected = _torch_logits(wrapper, batch)
        got = session.run(["logits"], batch)[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        agree += int(np.sum(got.argmax(-1) == expected.argmax(-1)))
        total += len(chunk)
    return {"max_abs_diff": worst, "argmax_agreement": agree / total, "examples": total, "batches": len(batches)}


# INT8 recipes (onnxruntime.quantization). Measured (`compare_int8_recipes`, ``export-onnx --int8_compare``) on
# all-MiniLM-L6-v2 fine-tuned on PhraseBank AllAgree: label agreement with the fp32 graph on the 4,846 PhraseBank
# 50Agree sentences — dynamic 96.6 %, dynamic-per-channel 98.7 %, matmul 96.9 %, matmul-per-channel 98.4 %,
# matmul-per-channel-ffn-out-fp32 99.3 %, static-qdq (calibrated on 512 earnings-call sentences) 94.6 %,
# weight-only 99.9 %, weight-only-int8-compute 99.8 %; later, smooth-dynamic-per-channel 99.4 % (64 → 31 flips at
# 0.96x the speed of dynamic-per-channel), smooth-matmul-per-channel 99.4 % (reports/onnx_int8_minilm/).
INT8_RECIPES = {
    # every operator onnxruntime's dynamic quantizer knows: MatMul, the fused Attention (Q/K/V weights) and
    # EmbedLayerNormalization / Gather (the word embeddings in 8 bits); one scale per weight tensor
    "dynamic": {"mode": "dynamic", "op_types": None, "per_channel": False},
    "dynamic-per-channel": {"mode": "dynamic", "op_types": None, "per_channel": True},
    # the MatMul weights only (attention output, FFN in/out, pooler): Q/K/V and the embeddings stay fp32
    "matmul": {"mode": "dynamic", "op_types": ["MatMul"], "per_channel": False},
    "matmul-per-channel": {"mode": "dynamic", "op_types": ["MatMul"], "per_channel": True},
    # as above, and the FFN output projections (GELU activations, the widest ranges) kept in fp32
    "matmul-per-channel-ffn-out-fp32": {"mode": "dynamic", "op_types": ["MatMul"], "per_channel": True,
                                        "keep_fp32": "ffn_output"},
    # static QDQ: activation ranges calibrated (MinMax) on --calibration_texts, weights per channel
    "static-qdq": {"mode": "static", "op_types": ["MatMul"], "per_channel": True},
    # weight-only: the MatMul weights in 8 bits with a scale per block of 32 input channels (MatMulNBits), the
    # activations stay fp32 (dequantized weights, fp32 compute) or are quantized per block (int8 compute)
    "weight-only": {"mode": "weight-only", "op_types": ["MatMul"], "block_size": 32, "accuracy_level": 0},
    "weight-only-int8-compute": {"mode": "weight-only", "op_types": ["MatMul"], "block_size": 32,
                                 "accuracy_level": 4},
    # SmoothQuant-style smoothing of the torch model first (finlight.deploy.smoothquant, calibrated on
    # --calibration_texts, strength --smooth_alpha), then the dynamic recipe of the same name: the activation
    # outliers that set the per-tensor scales move into the per-channel quantized weights
    "smooth-dynamic-per-channel": {"mode": "dynamic", "op_types": None, "per_channel": True, "smooth": True},
    "smooth-matmul-per-channel": {"mode": "dynamic", "op_types": ["MatMul"], "per_channel": True, "smooth": True},
}
SMOOTH_ALPHA = 0.8  # chosen on earnings-call texts, not on the evaluated ones: reports/onnx_int8_minilm/
# the default keeps the model's decisions (≥ 99.5 % agreement; the activation-quantizing recipes flipped 0.7–5.4 %);
# it buys file size, not speed: `--int8_recipe dynamic-per-channel` is the fast one (~2x fp32, 4x smaller)
DEFAULT_INT8 = "weight-only"


def _ffn_output_matmuls(path: str, config) -> list[str]:
    """Names of the MatMul nodes whose weight is ``[intermediate_size, hidden_size]`` (each layer's FFN output)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    wanted = (config.intermediate_size, config.hidden_size)
    return [node.name for node in graph.node if node.op_type == "MatMul" and any(shapes.get(i) == wanted
                                                                                for i in node.input)]


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def length_sorted_feeds(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32) -> list[dict]:
    """Longest-first batches, each padded to its own longest text (as the Predictor forms them)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id or 0
    feeds = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            ids[r, :len(encoded[i])], mask[r, :len(encoded[i])] = encoded[i], 1
        feeds.append({"input_ids": ids, "attention_mask": mask, "rows": np.asarray(rows)})
    return feeds


def quantize_int8(fp32_path: str, int8_path: str, recipe: str = DEFAULT_INT8, config=None,
                  calibration: Optional[list[dict]] = None, presmoothed: bool = False,
                  keep_fp32: Sequence[str] = (), only: Optional[Sequence[str]] = None) -> None:
    """``model.onnx`` → INT8 by one of `INT8_RECIPES` (``static-qdq`` needs ``calibration`` feeds; a ``smooth-*``
    recipe the graph of the smoothed model, ``presmoothed``, which `export_smoothed` writes). ``keep_fp32``: node
    names left unquantized on top of the recipe's own (`finlight.deploy.int8_sensitivity` chooses them);
    ``only``: quantize just these nodes (dynamic and static recipes; the sensitivity ranking uses it).

    Runs in a scratch working directory: onnxruntime's symbolic shape inference saves a debug copy of the model
    (``sym_shape_infer_temp.onnx`` + external data) into the current directory when it cannot infer every shape."""
    import contextlib
    import tempfile

    if INT8_RECIPES.get(recipe, {}).get("smooth") and not presmoothed:
        raise FinlightError(f"--int8_recipe {recipe}: quantizes the graph of the smoothed model (export_smoothed), "
                            f"not {fp32_path}")
    fp32_path, int8_path = os.path.abspath(fp32_path), os.path.abspath(int8_path)
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        _quantize_int8(fp32_path, int8_path, recipe, config, calibration, list(keep_fp32), only)


def _quantize_int8(fp32_path: str, int8_path: str, recipe: str, config, calibration: Optional[list[dict]],
                   keep_fp32: list[str], only: Optional[Sequence[str]]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if recipe not in INT8_RECIPES:
        raise FinlightError(f"--int8_recipe {recipe!r}: choose one of {', '.join(INT8_RECIPES)}")
    spec = INT8_RECIPES[recipe]
    exclude = _ffn_output_matmuls(fp32_path, config) if spec.get("keep_fp32") == "ffn_output" else []
    exclude += [name for name in keep_fp32 if name not in exclude]
    only = list(only) if only is not None else None
    if only is not None and spec["mode"] == "weight-only":
        raise FinlightError(f"--int8_recipe {recipe}: quantizing a subset of nodes is for dynamic / static recipes")
    # fused contrib operators carry no type information for the quantizer: their outputs are float
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet():
        if spec["mode"] == "dynamic":
            quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=spec["per_channel"],
                             op_types_to_quantize=spec["op_types"], nodes_to_quantize=only, nodes_to_exclude=exclude,
                             extra_options=extra)
            return
        if spec["mode"] == "weight-only":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(fp32_path, bits=8, block_size=spec["block_size"], is_symmetric=True,
                                             accuracy_level=spec["accuracy_level"], nodes_to_exclude=exclude,
                                             op_types_to_quantize=tuple(spec["op_types"]))
            quantizer.process()
            quantizer.model.save_model_to_file(int8_path, use_external_data_format=False)
            return
        if not calibration:
            raise FinlightError(f"--int8_recipe {recipe}: needs calibration texts (--calibration_texts)")
        feeds = [{k: f[k] for k in ("input_ids", "attention_mask")} for f in calibration]
        typed = f"{int8_path}.typed.onnx"
        _type_matmul_inputs(fp32_path, typed)
        try:
            quantize_static(typed, int8_path, _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=spec["op_types"], per_channel=spec["per_channel"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=only,
                            nodes_to_exclude=exclude, extra_options=extra)
        finally:
            os.remove(typed)


def _type_matmul_inputs(path: str, typed_path: str) -> None:
    """A copy of the graph where every MatMul input without type information is declared float.

    ONNX shape inference does not know onnxruntime's fused operators (Attention, SkipLayerNormalization,
    BiasGelu), so their outputs carry no type, and the static quantizer leaves untyped activations unquantized
    (only the weights would get Q/DQ). In a float graph a MatMul's inputs are float."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    typed = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    typed |= {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul":
            for name in node.input:
                if name and name not in typed:
                    graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                    typed.add(name)
    onnx.save(model, typed_path)


def _run_feeds(session, feeds: list[dict]) -> np.ndarray:
    """Logits of every fed text, in input order."""
    out = [session.run(["logits"], {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]})[0]
           for f in feeds]
    logits = np.empty((sum(len(f["rows"]) for f in feeds), out[0].shape[-1]), dtype=np.float32)
    for f, o in zip(feeds, out):
        logits[f["rows"]] = o
    return logits


def compare_int8_recipes(fp32_path: str, tokenizer, texts: Sequence[str], max_length: int, config,
                         recipes: Sequence[str] = tuple(INT8_RECIPES), calibration_texts: Optional[Sequence[str]] = None,
                         threads: Optional[int] = None, repeats: int = 3, timing_texts: int = 1024,
                         workdir: Optional[str] = None, smoothed: Optional[Callable[[], str]] = None,
                         smooth_alpha: Optional[float] = None) -> dict:
    """For each recipe: label agreement with the fp32 graph on all ``texts`` (the share of equal argmax), the
    largest probability change, file size, and samples/s (ONNX Runtime on longest-first batches of 32,
    tokenization excluded) on an evenly spaced sample of ``timing_texts`` of them: the median of ``repeats``
    rounds, each round running every recipe (and fp32) in turn so that load from other processes falls on all
    alike. The ``smooth-*`` recipes quantize the graph ``smoothed()`` returns (the smoothed model's, exported
    once; `export_onnx` passes it), else they are listed as skipped."""
    import statistics
    import tempfile
    import time

    feeds = length_sorted_feeds(tokenizer, texts, max_length)
    step = max(1, len(texts) // timing_texts)
    timing_feeds = length_sorted_feeds(tokenizer, list(texts)[::step][:timing_texts], max_length)
    timed_n = sum(len(f["rows"]) for f in timing_feeds)
    calibration = length_sorted_feeds(tokenizer, calibration_texts, max_length) if calibration_texts else None
    sessions = {"fp32": _session(fp32_path, threads)}
    results = {"fp32": {"agreement": 1.0, "size_mb": os.path.getsize(fp32_path) / 1e6}}
    reference = _run_feeds(sessions["fp32"], feeds)
    labels, probs = reference.argmax(-1), _softmax(reference)
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        for recipe in recipes:
            spec = INT8_RECIPES[recipe]
            if (spec["mode"] == "static" or spec.get("smooth")) and not calibration:
                results[recipe] = {"skipped": "no calibration texts"}
                continue
            if spec.get("smooth") and smoothed is None:
                results[recipe] = {"skipped": "needs the torch model to smooth (python -m finlight export-onnx)"}
                continue
            path = os.path.join(folder, f"{recipe}.onnx")
            source = smoothed() if spec.get("smooth") else fp32_path
            quantize_int8(source, path, recipe, config, calibration, presmoothed=bool(spec.get("smooth")))
            sessions[recipe] = _session(path, threads)
            logits = _run_feeds(sessions[recipe], feeds)
            results[recipe] = {"agreement": float(np.mean(logits.argmax(-1) == labels)),
                               "disagreements": int(np.sum(logits.argmax(-1) != labels)),
                               "max_prob_diff": float(np.abs(_softmax(logits) - probs).max()),
                               "size_mb": os.path.getsize(path) / 1e6}
            if spec.get("smooth"):
                results[recipe]["smooth_alpha"] = smooth_alpha
        seconds = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                start = time.perf_counter()
                _run_feeds(session, timing_feeds)
                seconds[name].append(time.perf_counter() - start)
    fp32_speed = timed_n / statistics.median(seconds["fp32"])
    for name, times in seconds.items():
        speed = timed_n / statistics.median(times)
        results[name].update(samples_per_s=speed, speedup_vs_fp32=speed / fp32_speed)
    return {"texts": len(texts), "timed_texts": timed_n, "rounds": repeats, "calibration_texts": len(calibration_texts or []),
            "max_length": max_length, "threads": threads, "recipes": results}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def export_onnx(source: str, output_dir: str, int8: bool = False, opset: int = 18, atol: float = 1e-4,
                max_length: Optional[int] = None, check_texts: Optional[Sequence[str]] = None,
                dynamo: bool = True, trust_remote_code: bool = False, optimize: Optional[bool] = None,
                int8_recipe: str = DEFAULT_INT8, compare_texts: Optional[Sequence[str]] = None,
                calibration_texts: Optional[Sequence[str]] = None, smooth_alpha: float = SMOOTH_ALPHA,
                int8_keep_fp32: Sequence[str] = (), first_token_last_layer: bool = True) -> dict:
    """Export, check, optionally quantise; returns (and writes) the manifest.

    ``int8_recipe`` is one of `INT8_RECIPES`; ``compare_texts`` measures every recipe on those texts (label
    agreement with fp32, speed, size: the manifest's ``int8_options``); ``calibration_texts`` feed ``static-qdq``
    and the smoothing of the ``smooth-*`` recipes (strength ``smooth_alpha``); ``int8_keep_fp32`` names nodes of
    the quantized graph to leave in fp32 (`finlight.deploy.int8_sensitivity` ranks them).

    ``optimize=None`` (auto) runs onnxruntime's transformer optimizer where it applies (BERT-family graphs from
    the dynamo exporter): the fused graph is the faster deployment artefact and passes the same check.
    ``first_token_last_layer``: a BERT classifier's last layer is traced for [CLS] only (`finlight.core.first_token`:
    fewer FLOPs, the same logits — the check compares with the whole-layer torch model)."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FinlightError(f"{output_dir}: exists and is not empty; choose a new --output_dir")
    if int8_recipe not in INT8_RECIPES:  # before any work: a typo should not cost an export
        raise FinlightError(f"--int8_recipe {int8_recipe!r}: choose one of {', '.join(INT8_RECIPES)}")
    if not 0.0 <= smooth_alpha <= 1.0:
        raise FinlightError(f"--smooth_alpha {smooth_alpha}: must be in [0, 1]")
    if INT8_RECIPES[int8_recipe].get("smooth") and int8 and not calibration_texts:
        raise FinlightError(f"--int8_recipe {int8_recipe}: needs --calibration_texts (sentences to measure the "
                            f"activation ranges on, not the texts you evaluate on)")
    model, tokenizer = load_source(source, trust_remote_code)
    has_dendrites = any(type(m).__name__ == "PAINeuronModule" for m in model.modules())
    if has_dendrites and dynamo:
        # perforatedai's dendrite modules branch in Python on their own state: torch.export fails on them
        log.info("export-onnx: the model has perforatedai dendrites; using the TorchScript exporter")
        dynamo = False
    if optimize is None:
        optimize = model.config.model_type in BERT_FAMILY and not has_dendrites
    if optimize:
        _require_bert_family(model.config.model_type)
        # onnxruntime's fusion patterns (one Attention kernel per layer, EmbedLayerNormalization) match the
        # TorchScript graph of eager attention; an SDPA or torch.export graph only gets LayerNorm/GELU fusions
        model.set_attn_implementation("eager")
        dynamo = False
    wrapper = LogitsOnly(model).eval()  # the exporter restores the wrapper's mode recursively: it must be eval
    positions = getattr(model.config, "max_position_embeddings", 512) or 512
    max_length = min(max_length or positions, positions)
    texts = list(check_texts or CHECK_TEXTS)
    if len(texts) < 2:
        raise FinlightError("export-onnx: need at least 2 check texts (a padded batch is part of the check)")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.onnx")
    example = _encode(tokenizer, texts[:2], max_length)  # two texts of different length: a real padding mask
    fused = _write_graph(wrapper, example, path, opset, dynamo, optimize, first_token_last_layer)
    check = compare_with_torch(wrapper, path, tokenizer, texts, max_length)
    if check["max_abs_diff"] > atol:
        raise FinlightError(f"{path}: ONNX logits differ from torch by {check['max_abs_diff']:.2e} > atol {atol:g}; "
                            f"try --legacy_exporter or another --opset")
    manifest = {
        "source": source, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_length": max_length, "files": {"fp32": "model.onnx"}, "optimized": fused,
        "first_token_last_layer": first_token_last_layer and target_layer(model) is not None,
        "check": {"fp32": {**check, "atol": atol}},
    }
    if int8:
        quantized = os.path.join(output_dir, "model.int8.onnx")
        calibration = length_sorted_feeds(tokenizer, calibration_texts, max_length) if calibration_texts else None

        def smoothed(folder: str) -> str:  # the smoothed model's fp32 graph, exported and checked like model.onnx
            if calibration is None:
                raise FinlightError("the smooth-* INT8 recipes need calibration texts (--calibration_texts)")
            graph = os.path.join(folder, f"smoothed_{smooth_alpha:g}.onnx")
            if not os.path.isfile(graph):
                export_smoothed(model, calibration, smooth_alpha, graph, example, opset, dynamo, optimize,
                                first_token_last_layer)
                smooth_check = compare_with_torch(wrapper, graph, tokenizer, texts, max_length)
                if smooth_check["max_abs_diff"] > atol:
                    raise FinlightError(f"{graph}: the smoothed graph's logits differ from torch by "
                                        f"{smooth_check['max_abs_diff']:.2e} > atol {atol:g}")
            return graph

        smooth = bool(INT8_RECIPES[int8_recipe].get("smooth"))
        with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
            source = smoothed(scratch) if smooth else path
            try:
                _check_node_names(source, int8_keep_fp32)
            except FinlightError:
                shutil.rmtree(output_dir, ignore_errors=True)  # ours (it was empty or absent): a rerun can reuse it
                raise
            quantize_int8(source, quantized, int8_recipe, model.config, calibration, presmoothed=smooth,
                          keep_fp32=int8_keep_fp32)
            if compare_texts:
                manifest["int8_options"] = compare_int8_recipes(
                    path, tokenizer, compare_texts, max_length, model.config, calibration_texts=calibration_texts,
                    threads=torch.get_num_threads(), smoothed=lambda: smoothed(scratch), smooth_alpha=smooth_alpha)
        manifest["files"]["int8"] = "model.int8.onnx"
        manifest["int8_recipe"] = int8_recipe
        if int8_keep_fp32:
            manifest["int8_keep_fp32"] = list(int8_keep_fp32)
        if smooth:
            manifest["smooth_alpha"] = smooth_alpha
        manifest["check"]["int8"] = compare_with_torch(wrapper, quantized, tokenizer, texts, max_length)
    model.config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    manifest["sizes_mb"] = {k: os.path.getsize(os.path.join(output_dir, f)) / 1e6 for k, f in manifest["files"].items()}
    with open(os.path.join(output_dir, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


def _check_node_names(path: str, names: Sequence[str]) -> None:
    """Every name in ``names`` is a quantizable node of ``path`` (a typo would otherwise keep nothing in fp32)."""
    if not names:
        return
    from finlight.deploy.int8_sensitivity import candidate_nodes

    known = set(candidate_nodes(path))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FinlightError(f"--int8_keep_fp32: {len(unknown)} of {len(names)} names are not quantizable nodes of "
                            f"the graph to quantize ({unknown[0]!r} …); use the names benchmarks/int8_mixed.py "
                            f"prints for this model and recipe")


def _write_graph(wrapper: torch.nn.Module, example: dict, path: str, opset: int, dynamo: bool,
                 optimize: bool, first_token_last_layer: bool = True) -> Optional[dict]:
    """``wrapper`` traced on ``example`` with dynamic batch and sequence axes to ``path`` (a BERT classifier's
    last layer for [CLS] only when ``first_token_last_layer``); then onnxruntime's transformer optimizer when
    ``optimize`` (returns its fused-operator counts)."""
    sizes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    shortcut = first_token_only(wrapper.model) if first_token_last_layer else contextlib.nullcontext()
    with _quiet(), shortcut:
        kwargs = {"external_data": sizes > 1.8e9, "verbose": False} if dynamo else {}
        inputs = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
        torch.onnx.export(wrapper, inputs, path, input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=dynamo, **kwargs)
    return _optimize_graph(path, wrapper.model.config) if optimize else None


def export_smoothed(model: torch.nn.Module, calibration: list[dict], alpha: float, path: str, example: dict,
                    opset: int = 18, dynamo: bool = False, optimize: bool = True,
                    first_token_last_layer: bool = True) -> dict:
    """A smoothed copy of ``model`` (`finlight.deploy.smoothquant`; activation maxima from the ``calibration``
    feeds) written to ``path`` as ``model.onnx`` is; returns the per-layer scale ranges. ``model`` is unchanged."""
    import copy

    from finlight.deploy.smoothquant import input_maxima, smooth_encoder

    smoothed = copy.deepcopy(model).eval()
    batches = [{k: torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask")} for f in calibration]
    summary = smooth_encoder(smoothed, input_maxima(smoothed, batches), alpha)
    _write_graph(LogitsOnly(smoothed).eval(), example, path, opset, dynamo, optimize, first_token_last_layer)
    return summary


def _require_bert_family(model_type: str) -> None:
    if model_type not in BERT_FAMILY:
        raise FinlightError(f"--optimize supports BERT-family encoders {BERT_FAMILY}, not {model_type!r}; export "
                            f"with --no_optimize")


def _optimize_graph(path: str, config) -> dict:
    """onnxruntime's transformer optimizer, in place; returns the counts of fused operators."""
    _require_bert_family(config.model_type)
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet():
            optimized = optimize_model(path, model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
            optimized.save_model_to_file(path)
    except Exception as err:  # the optimizer's shape inference rejects some graphs (e.g. TorchScript exports)
        raise FinlightError(f"{path}: onnxruntime's optimizer failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120]}); export with --no_optimize") from None
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):  # still correct, only slower: seen with onnxruntime 1.30 (fused from 1.32 on)
        import onnxruntime

        log.warning("%s: onnxruntime %s fused no Attention (fused: %s); the graph is correct but runs unfused "
                    "attention — onnxruntime >= 1.32 fuses it", path, onnxruntime.__version__, fused or "nothing")
    return fused


def export_onnx_command(output_dir: str, model: Optional[str] = None, ckpt_path: Optional[str] = None,
                        int8: bool = False, opset: PositiveInt = 18, atol: PositiveFloat = 1e-4,
                        max_length: Optional[PositiveInt] = None, check_texts: Optional[str] = None,
                        optimize: Optional[bool] = None, legacy_exporter: bool = False,
                        trust_remote_code: bool = False, int8_recipe: str = DEFAULT_INT8,
                        int8_compare: Optional[str] = None, calibration_texts: Optional[str] = None,
                        smooth_alpha: float = SMOOTH_ALPHA, int8_keep_fp32: Optional[str] = None,
                        first_token_last_layer: bool = True) -> dict:
    """Export a classifier to ONNX (dynamic batch and sequence axes), check it against torch, optionally
    quantise to INT8.

    Args:
        output_dir: the folder for model.onnx, the tokenizer and the checks.
        model: a Hugging Face directory (python -m finlight export …); give this or ckpt_path.
        ckpt_path: a finlight checkpoint; give this or model.
        int8: also write model.int8.onnx (INT8 by int8_recipe).
        opset: ONNX opset version.
        atol: largest accepted |onnx - torch| logit difference.
        max_length: tokens per text (default: the model's limit).
        check_texts: a text file, one sentence a line, to check on.
        optimize: onnxruntime transformer optimizer (fused kernels) before the check; default: on for
            BERT-family models exported with the dynamo exporter (--no_optimize keeps the graph as is).
        legacy_exporter: TorchScript exporter instead of dynamo.
        trust_remote_code: run the model repository's own code (off unless you trust it).
        int8_recipe: how --int8 quantises (see INT8_RECIPES in finlight/deploy/onnx.py): dynamic,
            dynamic-per-channel, matmul, matmul-per-channel, matmul-per-channel-ffn-out-fp32, static-qdq,
            weight-only, weight-only-int8-compute, smooth-dynamic-per-channel or smooth-matmul-per-channel.
        int8_compare: a text file, one sentence a line: measure every INT8 recipe on it (label agreement with
            fp32, speed, size) into finlight_onnx.json's int8_options.
        calibration_texts: a text file, one sentence a line, to calibrate static-qdq and the smooth-* recipes on
            (not the texts you evaluate on).
        smooth_alpha: smoothing strength of the smooth-* recipes, in [0, 1]: 0 leaves the activations as they
            are, 1 moves their whole range into the weights.
        int8_keep_fp32: comma-separated node names of the graph to quantize that stay fp32 (the sensitive ones
            benchmarks/int8_mixed.py chooses for a model and recipe).
        first_token_last_layer: trace a BERT classifier's last layer for [CLS] only, the one position its
            pooler reads (same logits, ~10 % faster on CPU); --no_first_token_last_layer keeps the whole layer.
    """
    if (model is None) == (ckpt_path is None):
        raise FinlightError("export-onnx: give exactly one of --model (a Hugging Face directory) or --ckpt_path "
                            "(a finlight checkpoint)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    texts, compare, calibration = (_text_lines(f, flag) for f, flag in (
        (check_texts, "--check_texts"), (int8_compare, "--int8_compare"), (calibration_texts, "--calibration_texts")))
    manifest = export_onnx(model or ckpt_path, output_dir, int8 or bool(int8_compare), opset, atol,
                           max_length, texts, not legacy_exporter, trust_remote_code, optimize, int8_recipe, compare,
                           calibration, smooth_alpha,
                           [n.strip() for n in (int8_keep_fp32 or "").split(",") if n.strip()], first_token_last_layer)
    fp32 = manifest["check"]["fp32"]
    line = (f"finlight: exported to {output_dir}/model.onnx ({manifest['sizes_mb']['fp32']:.1f} MB; "
            f"max |onnx − torch| = {fp32['max_abs_diff']:.1e} on {fp32['examples']} texts)")
    if "int8" in manifest["check"]:
        q = manifest["check"]["int8"]
        line += (f"; model.int8.onnx ({manifest['int8_recipe']}, {manifest['sizes_mb']['int8']:.1f} MB; max |int8 − torch| = "
                 f"{q['max_abs_diff']:.1e}, argmax agreement {q['argmax_agreement']:.1%})")
    print(line)
    for recipe, r in manifest.get("int8_options", {}).get("recipes", {}).items():
        if "agreement" in r:
            print(f"  {recipe:34s} agreement with fp32 {r['agreement']:.2%}, {r['samples_per_s']:.0f} samples/s, "
                  f"{r['size_mb']:.1f} MB")
    return manifest


def _text_lines(path: Optional[str], flag: str) -> Optional[list[str]]:
    """A text file's non-empty lines (one sentence a line), or None without a file."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise FinlightError(f"{flag} {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def export_onnx_main(argv: list[str]) -> dict:
    return run_command(export_onnx_command, argv, "export-onnx")
