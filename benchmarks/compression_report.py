"""Compression report: accuracy, macro-F1, size, parameters, throughput and peak memory of model variants.

    HF_HUB_OFFLINE=1 python benchmarks/compression_report.py --config configs/sapling_bert_phrasebank.yaml \
        --sapling_run checkpoints/sapling_bert_phrasebank/version_0 \
        --int8 sapling_2of6 --bnb8 sapling_2of6 --bnb4 sapling_2of6 \
        --gpu_variant qlora_llama2_7b=exports/qlora_llama2_7b --gpu_variant gptq_llama2_7b=exports/gptq_llama2_7b \
        --out bench_out/compression

A variant is a finlight checkpoint (``.ckpt``) or a Hugging Face directory (an export, a merged QLoRA model,
or a quantized directory written by ``python -m finlight quantize``: its quantization config is applied at
load). ``--sapling_run [NAME=]DIR`` adds, for each depth a SuccessiveLayerDrop run passed through, the checkpoint of
that depth with the best ``val/macro_f1`` (``sapling_<depth>of<start>``, or ``NAME_…`` to tell several runs
apart: the deepest one is the model before any drop; ``--sapling_depths D …`` keeps only those depths; a sub-layer run is grouped by the attention + MLP parts left instead:
``sapling_<parts>of<start>parts``). Post-training variants of a variant ``NAME``: ``--int8 NAME`` (dynamic
INT8, CPU), ``--bnb4 NAME`` / ``--bnb8 NAME`` (bitsandbytes at load time), ``--gptq NAME`` (GPTQ 4-bit calibrated on
``--calibration_examples`` texts of the config's **train** split; decoders and BERT-style encoders).
``--gpu_variant NAME=SRC`` is measured only where CUDA is available; elsewhere it is listed as "not run here
(needs GPU)", and a variant that fails (e.g. a GPTQ group size that does not divide a layer's width) is listed
with its error — never silently missing.

Every variant is scored once on the **test** split of ``--config``'s data section (the split the runs were
trained with: same path, ratios, seed) — selection happened on validation during training. Each variant is
measured in its own fresh process (spawned), so its peak memory is its own: ``peak_rss_mb`` is the process
peak (interpreter + torch included), ``rss_model_mb`` the growth over the process after imports and, on CUDA,
``peak_gpu_mb`` the maximum allocated. ``params`` counts the unquantized architecture's parameters (packed
4-bit storage would halve it). Throughput is model time over the whole test set in sorted, dynamically padded
batches after one warm-up pass (tokenization excluded): samples/s and real (non-padding) tokens/s. Writes
``report.md``, ``report.csv``, ``results.json``, ``pareto.png`` (size on disk vs accuracy, the Pareto front
drawn; beside it docs/s vs accuracy with its own front) and the same figure, table and numbers to TensorBoard
under ``--out/tensorboard``. ``--repeats N`` times N passes and keeps the median (less noise on a shared machine).
``--reference NAME`` adds two columns against variant ``NAME`` (e.g. the unpruned model): ``acc_vs_ref_pt``,
the accuracy difference in points, and ``speed_vs_ref``, the throughput ratio (samples/s over the reference's).

A causal-LM label-word classifier (``--config`` with an `InstructionDataModule`; `CausalLMClassifier`
checkpoints or exports) is scored as its validation scores it: the test prompts rendered with each variant's
tokenizer, constrained scoring of the label words (one prompt pass + KV cache, `cached_label_scores`). Its rows
add ``scoring_tokens_per_s`` (prompt + label-continuation tokens through those passes per second: the
``val/scoring_tokens_per_s`` of training) and ``gen_tokens_per_s`` (greedy decoding of exactly ``--gen_tokens`` new
tokens for the first ``--gen_examples`` test prompts, ``--gen_batch`` at a time: new tokens over the wall time of
``generate``, prompt pass included); ``tokens_per_s`` stays empty for them. Their warm-up is the longest batch,
not a whole pass. GPTQ of such a model is calibrated on rendered training prompts, not bare sentences
(``--gptq_group_size`` must divide the layers' input widths: 64 for SmolLM2's 576).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import multiprocessing
import os
import re
import resource
import sys
import tempfile
from typing import Optional, Sequence

COLUMNS = ("variant", "status", "device", "layers", "acc", "macro_f1", "size_mb", "params", "samples_per_s",
           "tokens_per_s", "peak_rss_mb", "rss_model_mb", "peak_gpu_mb")
REFERENCE_COLUMNS = ("acc_vs_ref_pt", "speed_vs_ref")
CAUSAL_COLUMNS = ("scoring_tokens_per_s", "gen_tokens_per_s")
QUANTIZATIONS = ("int8", "bnb4", "bnb8", "gptq4")
NEEDS_GPU = "not run here (needs GPU)"
LAYER_KEY = re.compile(r"^model\.(?:\w+\.)*?layers?\.(\d+)\.")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller or equal size and higher or equal accuracy, one
    of them strictly. Ordered by size."""
    front = []
    for i, (size, acc) in enumerate(points):
        dominated = any((s <= size and a >= acc) and (s < size or a > acc) for j, (s, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------------------ checkpoints
@functools.lru_cache(maxsize=None)
def _checkpoint_meta(path: str) -> tuple[int, Optional[float], Optional[int]]:
    """(layers, saved ``val/macro_f1``, attention + MLP parts or None) of a checkpoint, read once and memory-mapped
    (a 7B run's checkpoints are tens of GB; grouping a run asks each file several questions)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    layers = {int(m.group(1)) for k in checkpoint["state_dict"] if (m := LAYER_KEY.match(k))}
    score = None
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith(("RunCheckpoint", "ModelCheckpoint")) and state.get("current_score") is not None:
            score = float(state["current_score"])
    if score is None:  # the default file name carries it too
        found = re.search(r"val_macro_f1([0-9.]+?)(?:-v\d+)?\.ckpt$", path)
        score = float(found.group(1)) if found else None
    config = ((checkpoint.get("finlight") or {}).get("backbone") or {}).get("config") or {}
    removed = config.get("removed_sublayers")
    parts = (2 * int(config["num_hidden_layers"]) - sum(len(p) for p in removed)
             if removed and any(removed) else None)
    return len(layers), score, parts


def checkpoint_depth_and_score(path: str) -> tuple[int, Optional[float]]:
    """(layers, the ``val/macro_f1`` it was saved with) of a finlight checkpoint, without building the model."""
    layers, score, _ = _checkpoint_meta(path)
    return layers, score


def checkpoint_parts(path: str) -> Optional[int]:
    """Attention + MLP parts left in a decoder checkpoint of a sub-layer dropping run (two per layer minus the
    removed ones recorded in ``config.removed_sublayers``); None when the checkpoint records no removal."""
    return _checkpoint_meta(path)[2]


def best_by_depth(folder: str, unit: str = "layers") -> dict[int, tuple[str, float]]:
    """For each depth a layer-dropping run passed through: (its best-validation checkpoint, that score). With
    ``unit="parts"`` (sub-layer runs, whose layer count barely moves) the depth is the attention + MLP parts left."""
    best: dict[int, tuple[str, float]] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ckpt") and not name.startswith("last"):
            path = os.path.join(folder, name)
            depth, score = checkpoint_depth_and_score(path)
            if unit == "parts":
                parts = checkpoint_parts(path)
                depth = 2 * depth if parts is None else parts
            if score is not None and (depth not in best or score > best[depth][1]):
                best[depth] = (path, score)
    if not best:
        raise SystemExit(f"{folder}: no checkpoint with a val/macro_f1 score (checkpoint.save_top_k: -1 keeps them)")
    return best


def is_sublayer_run(folder: str) -> bool:
    """Whether any checkpoint of the run records removed attention / MLP parts."""
    return any(checkpoint_parts(os.path.join(folder, n)) is not None for n in os.listdir(folder)
               if n.endswith(".ckpt") and not n.startswith("last"))


# ------------------------------------------------------------------------------------------ loading
def _hf_dir(source: str, scratch: str) -> str:
    """``source`` as a Hugging Face directory (a checkpoint is restored and saved under ``scratch``)."""
    if os.path.isdir(source):
        return source
    from finlight.core.restore import restore_from_checkpoint

    model, tokenizer, _, _ = restore_from_checkpoint(source)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    return scratch


def _params_on_disk(folder: str) -> Optional[int]:
    """Parameters of the unquantized model saved in ``folder`` (safetensors headers only)."""
    from safetensors import safe_open

    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    if not files:
        return None
    total = 0
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def render_prompts(tokenizer, prompts: dict, texts: Sequence[str]) -> list[str]:
    """``texts`` as the prompts a label-word classifier reads (``prompts``: `finlight.quantize.ptq.prompt_spec`)."""
    from finlight.causal_lm.data import PromptRenderer

    renderer = PromptRenderer(tokenizer, prompts["instruction"], prompts["label_words"], prompts["template"],
                              prompts["use_chat_template"], prompts["answer_prefix"])
    return [renderer.render(t) for t in texts]


def load_variant(source: str, quant: Optional[str] = None, device: str = "cpu", calibration=None,
                 prompts: Optional[dict] = None, group_size: int = 128):
    """(model in eval mode, tokenizer, parameters of the unquantized model) for one variant. With ``prompts``
    (a label-word classifier), GPTQ calibrates on the rendered prompts of the ``calibration`` texts."""
    import torch

    from finlight.quantize import ptq as compression
    from finlight.quantize.dynamic_int8 import dynamic_int8

    with tempfile.TemporaryDirectory() as scratch:
        if quant in (None, "int8") and not os.path.isdir(source):
            from finlight.core.restore import restore_from_checkpoint

            model, tokenizer, _, _ = restore_from_checkpoint(source)
        else:
            folder = _hf_dir(source, os.path.join(scratch, "model"))
            if quant in ("bnb4", "bnb8"):
                model, tokenizer = compression.load_bnb(folder, bits=4 if quant == "bnb4" else 8,
                                                        compute_dtype="float32" if device == "cpu" else "float16",
                                                        device=torch.device(device))
                return model, tokenizer, _params_on_disk(folder)
            if quant == "gptq4":
                if prompts is not None:
                    from transformers import AutoTokenizer

                    calibration = render_prompts(AutoTokenizer.from_pretrained(folder), prompts, calibration)
                out = compression.gptq_quantize(folder, os.path.join(scratch, "gptq"), calibration, group_size=group_size,
                                                device=torch.device(device))
                model, tokenizer = compression.load_quantized_dir(str(out), device=torch.device(device))
                return model, tokenizer, _params_on_disk(folder)
            model, tokenizer = compression.load_quantized_dir(folder, device=torch.device(device))
            if getattr(model.config, "quantization_config", None) is not None:
                return model.eval(), tokenizer, None  # already quantized on disk: the float count is unknown
    params = sum(p.numel() for p in model.parameters())
    if quant == "int8":
        model = dynamic_int8(model)
    else:
        model = model.to(device)
    return model.eval(), tokenizer, params


# ------------------------------------------------------------------------------------------ measuring
def measure(source: str, quant: Optional[str], texts: list[str], labels: list[int], max_length: int,
            batch_size: int, threads: Optional[int], device: str = "cpu", calibration=None, repeats: int = 1,
            prompts: Optional[dict] = None, generation: tuple[int, int, int] = (32, 16, 8),
            group_size: int = 128) -> dict:
    """Scores, size and speed of one variant (call it in a fresh process for an honest peak memory); the speed
    is that of the median of ``repeats`` timed passes over the test set. ``prompts`` (`prompt_spec`) marks a
    label-word classifier (`_measure_causal`; ``generation`` = examples, new tokens, batch of its decoding test)."""
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if prompts is not None:
            return _measure_causal(source, quant, texts, labels, max_length, batch_size, device, calibration,
                                   repeats, prompts, generation, group_size)
        return _measure(source, quant, texts, labels, max_length, batch_size, device, calibration, repeats,
                        group_size)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(source, quant, texts, labels, max_length, batch_size, device, calibration, repeats=1,
             group_size=128) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from finlight.quantize.dynamic_int8 import saved_size_bytes
    from finlight.prune.surgery import num_layers

    from _timing import timed

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_imports = _current_rss_mb()
    model, tokenizer, params = load_variant(source, quant, device, calibration, group_size=group_size)
    layers = num_layers(model)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        batches.append((rows, encoded["input_ids"].to(device), encoded["attention_mask"].to(device)))
    predicted = np.zeros(len(texts), dtype=np.int64)

    def one_pass() -> list:
        return [(rows, model(input_ids=ids, attention_mask=mask).logits.argmax(-1)) for rows, ids, mask in batches]

    with torch.inference_mode():
        one_pass()  # warm-up pass
        passes = [timed(one_pass, cuda) for _ in range(max(1, repeats))]
    seconds, outputs = sorted(passes, key=lambda p: p[0])[(len(passes) - 1) // 2]  # the median pass
    for rows, argmax in outputs:
        predicted[rows] = argmax.cpu().numpy()
    tokens = sum(int(mask.sum()) for _, _, mask in batches)
    return {"status": "ok", "device": device, "layers": layers, "acc": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro")),
            "size_mb": saved_size_bytes(model) / 2**20, "params": params,
            "samples_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _rss_mb(), "rss_model_mb": _current_rss_mb() - after_imports,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def _measure_causal(source, quant, texts, labels, max_length, batch_size, device, calibration, repeats, prompts,
                    generation, group_size=128) -> dict:
    """`_measure` for a causal-LM label-word classifier: constrained scoring accuracy and speed, and decoding speed."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from finlight.causal_lm.classifier import cached_label_scores
    from finlight.causal_lm.data import PromptRenderer
    from finlight.errors import FinlightError
    from finlight.quantize.dynamic_int8 import saved_size_bytes
    from finlight.prune.surgery import num_layers

    from _timing import timed

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_imports = _current_rss_mb()
    model, tokenizer, params = load_variant(source, quant, device, calibration, prompts, group_size)
    layers = num_layers(model)
    renderer = PromptRenderer(tokenizer, prompts["instruction"], prompts["label_words"], prompts["template"],
                              prompts["use_chat_template"], prompts["answer_prefix"])
    label_tokens = renderer.label_token_ids()
    sequences, prompt_lengths, _ = renderer.encode(texts, labels, max_length)  # cut as training cut them
    prompt_ids = [seq[:n] for seq, n in zip(sequences, prompt_lengths)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def left_padded(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompt_ids[i]):] = torch.tensor(prompt_ids[i])
            mask[r, width - len(prompt_ids[i]):] = 1
        return ids.to(device), mask.to(device)

    order = sorted(range(len(texts)), key=lambda i: -len(prompt_ids[i]))
    batches = [(rows, *left_padded(rows)) for rows in
               (order[start:start + batch_size] for start in range(0, len(order), batch_size))]
    predicted = np.zeros(len(texts), dtype=np.int64)

    def one_pass(which=batches) -> list:
        out = []
        for rows, ids, mask in which:
            scores = cached_label_scores(model, ids, mask, label_tokens)
            if scores is None:
                raise FinlightError(f"{source}: the model returns no repeatable KV cache; constrained scoring here "
                                    "needs one")
            out.append((rows, scores.argmax(-1)))
        return out

    with torch.inference_mode():
        one_pass(batches[:1])  # warm-up: the longest batch (a whole extra pass costs minutes for a decoder on CPU)
        passes = [timed(one_pass, cuda) for _ in range(max(1, repeats))]
        seconds, outputs = sorted(passes, key=lambda p: p[0])[(len(passes) - 1) // 2]  # the median pass
        examples, new_tokens, gen_batch = generation
        chosen = list(range(min(examples, len(texts))))
        gen_seconds = gen_count = 0
        for start in range(0, len(chosen), gen_batch):
            ids, mask = left_padded(chosen[start:start + gen_batch])
            elapsed, out = timed(lambda: model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, use_cache=True, pad_token_id=pad), cuda)
            gen_seconds += elapsed
            gen_count += (out.shape[1] - ids.shape[1]) * len(ids)
    for rows, argmax in outputs:
        predicted[rows] = argmax.cpu().numpy()
    tokens = sum(int(mask.sum()) for _, _, mask in batches) + len(texts) * sum(len(t) - 1 for t in label_tokens)
    return {"status": "ok", "device": device, "layers": layers, "acc": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro")),
            "size_mb": saved_size_bytes(model) / 2**20, "params": params,
            "samples_per_s": len(texts) / seconds, "tokens_per_s": None, "scoring_tokens_per_s": tokens / seconds,
            "gen_tokens_per_s": gen_count / gen_seconds if gen_seconds else None,
            "peak_rss_mb": _rss_mb(), "rss_model_mb": _current_rss_mb() - after_imports,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def _measure_in_child(args: tuple, queue) -> None:
    try:
        queue.put(("ok", measure(*args)))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which records it in the table
        queue.put(("error", f"{type(err).__name__}: {err}"))


def measure_isolated(*args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure_in_child, args=(args, queue))
    child.start()
    status, value = queue.get()
    child.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def test_split(config_path: str) -> tuple[list[str], list[int], int]:
    """Texts, label indices and max_length of the test split that ``config_path``'s data section makes."""
    from finlight.quantize.ptq import split_texts

    return split_texts(config_path, "test")


def merge_rows(earlier: list[dict], measured: list[dict]) -> list[dict]:
    """``earlier`` rows in their order, each replaced by the row of the same variant measured now; then the new
    variants. The reference columns are recomputed afterwards."""
    now = {r["variant"]: r for r in measured}
    merged = [now.pop(r["variant"], r) for r in earlier]
    for row in merged:
        row.pop("acc_vs_ref_pt", None), row.pop("speed_vs_ref", None)
    return merged + [r for r in measured if r["variant"] in now]


def not_measured(variant: str, status: str) -> dict:
    """A row for a variant that was not (or could not be) measured: listed, with the reason, never dropped."""
    return {**{k: None for k in COLUMNS}, "variant": variant, "status": status}


def add_reference_columns(rows: list[dict], reference: str) -> list[dict]:
    """Each measured row against the row named ``reference``: ``acc_vs_ref_pt`` (accuracy − the reference's, in
    points) and ``speed_vs_ref`` (samples/s over the reference's). Rows not measured, or all rows when the
    reference itself was not, get None. Returns ``rows`` (changed in place)."""
    ref = next((r for r in rows if r["variant"] == reference), None)
    usable = ref is not None and ref.get("status") == "ok"
    for row in rows:
        ok = usable and row.get("status") == "ok"
        row["acc_vs_ref_pt"] = 100.0 * (row["acc"] - ref["acc"]) if ok else None
        row["speed_vs_ref"] = row["samples_per_s"] / ref["samples_per_s"] if ok else None
    return rows


def columns(rows: list[dict]) -> tuple[str, ...]:
    """The table's columns: `COLUMNS`, the causal-LM speed columns and the reference columns when rows carry them."""
    causal = CAUSAL_COLUMNS if any(r.get(k) is not None for r in rows for k in CAUSAL_COLUMNS) else ()
    return COLUMNS + causal + (REFERENCE_COLUMNS if any(k in r for r in rows for k in REFERENCE_COLUMNS) else ())


# ------------------------------------------------------------------------------------------ writing
def _fmt(value, column: str = "") -> str:
    if value is None:
        return "–"
    if column == "acc_vs_ref_pt":
        return f"{value:+.2f}"
    if column == "speed_vs_ref":
        return f"{value:.2f}×"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    names = columns(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    lines += ["| " + " | ".join(_fmt(r.get(k), k) for k in names) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pareto_figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["status"] == "ok"]
    figure, (by_size, by_speed) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    # size: smaller is better; docs/s: larger is better (the front of its negative)
    for axes, key, sign, label in ((by_size, "size_mb", 1.0, "size on disk (MB)"),
                                   (by_speed, "samples_per_s", -1.0, "throughput (docs/s)")):
        points = [(r[key], r["acc"]) for r in measured]
        front = pareto_front([(sign * x, y) for x, y in points])
        axes.scatter([p[0] for p in points], [p[1] for p in points])
        for row, (x, y) in zip(measured, points):
            axes.annotate(row["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="gray",
                  label="Pareto front")
        axes.set_xlabel(label)
        axes.legend()
    by_size.set_ylabel("test accuracy")
    figure.tight_layout()
    return figure


def write_report(rows: list[dict], out: str) -> None:
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(out, "report.csv"), "w", newline="", encoding="utf-8") as handle:
        names = columns(rows)
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in names} for r in rows)
    table = markdown_table(rows)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    figure = pareto_figure(rows)
    figure.savefig(os.path.join(out, "pareto.png"), dpi=120)
    with SummaryWriter(os.path.join(out, "tensorboard")) as writer:
        writer.add_text("compression/report", table)
        writer.add_figure("compression/pareto", figure)
        for step, row in enumerate(r for r in rows if r["status"] == "ok"):
            for key in ("acc", "macro_f1", "size_mb", "samples_per_s", "tokens_per_s", "scoring_tokens_per_s",
                        "gen_tokens_per_s", "peak_rss_mb", "speed_vs_ref"):
                if row.get(key) is not None:
                    writer.add_scalar(f"compression/{key}", row[key], step)
    plt.close(figure)
    print(table)


# ------------------------------------------------------------------------------------------ command line
def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the YAML whose data section gives the test split")
    parser.add_argument("--variant", action="append", default=[], help="NAME=CKPT_OR_HF_DIR (repeat)")
    parser.add_argument("--sapling_run", action="append", default=[],
                        help="[NAME=]DIR: a layer-dropping run's checkpoint folder, one variant per depth it passed "
                             "through (NAME_<depth>of<start>; NAME defaults to sapling)")
    parser.add_argument("--sapling_depths", type=int, nargs="+", default=None, metavar="DEPTH",
                        help="only these depths (parts, for a sub-layer run) of each --sapling_run (default: all)")
    parser.add_argument("--sapling_start", type=int, default=None, metavar="DEPTH",
                        help="the depth the --sapling_run runs started from, for the variant names (default: the "
                             "deepest checkpoint kept, wrong once the early checkpoints are deleted)")
    parser.add_argument("--gpu_variant", action="append", default=[],
                        help="NAME=CKPT_OR_HF_DIR measured only where CUDA is available")
    for flag, quant in (("--int8", "int8"), ("--bnb4", "bnb4"), ("--bnb8", "bnb8"), ("--gptq", "gptq4")):
        parser.add_argument(flag, dest=quant, action="append", default=[], metavar="NAME",
                            help=f"also measure variant NAME as {quant}")
    parser.add_argument("--calibration_examples", type=int, default=128, help="GPTQ calibration texts (train split)")
    parser.add_argument("--gptq_group_size", type=int, default=128,
                        help="GPTQ weights per group; must divide every quantized layer's input width (-1: per column)")
    parser.add_argument("--out", default="bench_out/compression")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed passes over the test set per variant; the median one is reported")
    parser.add_argument("--reference", default=None, metavar="NAME",
                        help="add acc_vs_ref_pt (accuracy points) and speed_vs_ref (throughput ratio) against "
                             "variant NAME (e.g. the unpruned model)")
    parser.add_argument("--keep_rows", default=None, metavar="RESULTS_JSON",
                        help="rows of an earlier results.json for variants not measured in this run are kept (in their "
                             "order): remeasure a few variants without redoing e.g. slow GPTQ rows")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--gen_examples", type=int, default=32,
                        help="label-word classifiers: test prompts decoded for gen_tokens_per_s (0: skip)")
    parser.add_argument("--gen_tokens", type=int, default=16, help="new tokens each of them decodes (exactly)")
    parser.add_argument("--gen_batch", type=int, default=8, help="prompts decoded at once")
    parser.add_argument("--in_process", action="store_true",
                        help="measure in this process (faster; peak memory is then the running peak of all variants)")
    args = parser.parse_args(argv)
    import torch

    from finlight.quantize.ptq import calibration_sample, prompt_spec, split_texts
    from finlight.errors import FinlightError

    has_cuda = torch.cuda.is_available()
    device = ("cuda" if has_cuda else "cpu") if args.device == "auto" else args.device
    variants = dict(v.split("=", 1) for v in args.variant)
    for given in args.sapling_run:
        prefix, folder = given.split("=", 1) if "=" in given and not os.path.isdir(given) else ("sapling", given)
        unit = "parts" if is_sublayer_run(folder) else "layers"
        depths = best_by_depth(folder, unit)
        top, suffix = args.sapling_start or max(depths), "" if unit == "layers" else "parts"
        missing = sorted(set(args.sapling_depths or ()) - set(depths), reverse=True)
        if missing:
            parser.error(f"--sapling_depths {missing}: {folder} has no checkpoint at that depth "
                         f"(it has {sorted(depths, reverse=True)})")
        for d in sorted(depths, reverse=True):
            if args.sapling_depths and d not in args.sapling_depths:
                continue
            name = f"{prefix}_{d}of{top}{suffix}"
            if name in variants:
                parser.error(f"--sapling_run {given}: variant {name} exists already; name the runs apart "
                             "(--sapling_run NAME=DIR)")
            variants[name] = depths[d][0]
    gpu_only = dict(v.split("=", 1) for v in args.gpu_variant)
    if not variants and not gpu_only:
        parser.error("give at least one --variant, --sapling_run or --gpu_variant")
    for quant in QUANTIZATIONS:
        unknown = [n for n in getattr(args, quant) if n not in variants and n not in gpu_only]
        if unknown:
            parser.error(f"--{quant} {unknown[0]}: no variant with that name")
    planned = []
    for name in [*variants, *gpu_only]:
        planned += [name] + [f"{name}+{quant}" for quant in QUANTIZATIONS if name in getattr(args, quant)]
    if args.reference is not None and args.reference not in planned:
        parser.error(f"--reference {args.reference}: no variant with that name (variants: {', '.join(planned)})")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be ≥ 1")
    if args.gen_examples < 0 or args.gen_tokens < 1 or args.gen_batch < 1:
        parser.error("--gen_examples must be ≥ 0, --gen_tokens and --gen_batch ≥ 1")
    prompts = prompt_spec(args.config)
    texts, labels, max_length = test_split(args.config)
    calibration = None
    if args.gptq4:
        calibration = calibration_sample(split_texts(args.config, "train")[0], args.calibration_examples)
    run = measure if args.in_process else measure_isolated
    rows = []
    for name, source in [*variants.items(), *gpu_only.items()]:
        for quant in (None, *[q for q in QUANTIZATIONS if name in getattr(args, q)]):
            label = name + (f"+{quant}" if quant else "")
            if name in gpu_only and not has_cuda:
                rows.append(not_measured(label, NEEDS_GPU))
                continue
            where = "cpu" if quant == "int8" else device
            try:
                result = run(source, quant, texts, labels, max_length, args.batch_size, args.threads, where,
                             calibration if quant == "gptq4" else None, args.repeats, prompts,
                             (args.gen_examples, args.gen_tokens, args.gen_batch), args.gptq_group_size)
            except (RuntimeError, FinlightError, ValueError, ImportError) as err:
                rows.append(not_measured(label, f"failed: {str(err).splitlines()[0][:200]}"))
                continue
            rows.append({"variant": label, **result})
    if args.keep_rows:
        rows = merge_rows(json.load(open(args.keep_rows, encoding="utf-8")), rows)
    if args.reference is not None:
        add_reference_columns(rows, args.reference)
    write_report(rows, args.out)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
