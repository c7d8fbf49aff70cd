"""Choose the SmoothQuant strength (``--smooth_alpha``) of export-onnx's ``smooth-*`` INT8 recipes without looking
at the texts it is judged on, then judge it once.

For each alpha of the grid the fine-tuned classifier is smoothed (finlight.deploy.smoothquant; activation maxima
from 512 earnings-call sentences), exported, quantized by each smooth recipe, and scored by label agreement with
the fp32 graph on 2,000 *other* earnings-call sentences (other transcripts; unlabeled: agreement needs no label).
The alpha with the best selection agreement (ties: the smaller) is then measured once on the 4,846 PhraseBank
50Agree sentences (the issue's agreement set), beside the unsmoothed dynamic recipe, with speed: samples/s of
ONNX Runtime on longest-first batches of 32, tokenization excluded, median of 3 rounds in which every graph runs
in turn, as a ratio to the fp32 graph measured in the same rounds.

    HF_HUB_OFFLINE=1 python benchmarks/int8_smoothing.py [--model bench_out/minilm_ft_hf] \
        [--out reports/onnx_int8_minilm/smoothing.json]

``--model``: a fine-tuned Hugging Face classifier directory (``benchmarks/inference.py`` without ``--model`` makes
bench_out/minilm_ft_hf, the one of reports/onnx_int8_minilm/).
"""
import argparse
import glob
import json
import os
import statistics
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved  # noqa: E402
from machine import cpu_line  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
RECIPES = ("smooth-dynamic-per-channel", "smooth-matmul-per-channel")


def ect_sentences(files, per_file: int, min_words: int = 6) -> list[str]:
    """The first ``per_file`` lines of at least ``min_words`` words of each transcript (one sentence a line)."""
    out = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if len(line.split()) >= min_words]
        out += lines[:per_file]
    return out


def ect_sets() -> tuple[list[str], list[str]]:
    """The calibration (512 sentences of transcripts 1-128) and selection (2,000 of the others) earnings-call sets
    that the INT8 benchmarks share."""
    transcripts = sorted(glob.glob(os.path.join(DATA, "ect", "train", "ects", "*.txt")))
    return ect_sentences(transcripts[:128], 4)[:512], ect_sentences(transcripts[128:], 10)[:2000]


def samples_per_s(sessions: dict, feeds: list[dict], rounds: int) -> dict[str, float]:
    """Samples/s of each onnxruntime session on ``feeds``: the median of ``rounds`` interleaved rounds."""
    from finlight.deploy.onnx import _run_feeds

    count = sum(len(f["rows"]) for f in feeds)
    seconds = interleaved({name: (lambda s=session: _run_feeds(s, feeds)) for name, session in sessions.items()},
                          rounds)
    return {name: count / statistics.median(values) for name, values in seconds.items()}


def phrasebank_50agree() -> list[str]:
    with open(os.path.join(DATA, "financial_phrasebank", "Sentences_50Agree.txt"), encoding="latin-1") as handle:
        return [line.rsplit("@", 1)[0].strip() for line in handle if "@" in line]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "bench_out", "minilm_ft_hf"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "onnx_int8_minilm", "smoothing.json"))
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"--model {args.model}: not a Hugging Face model directory (benchmarks/inference.py makes one)")
    torch.set_num_threads(args.threads)
    from finlight.deploy import onnx as O

    print(cpu_line())
    calibration_texts, selection_texts = ect_sets()
    judged_texts = phrasebank_50agree()
    transcripts = len(glob.glob(os.path.join(DATA, "ect", "train", "ects", "*.txt")))
    print(f"calibration {len(calibration_texts)} / selection {len(selection_texts)} earnings-call sentences "
          f"(transcripts 1-128 / 129-{transcripts}); judged on {len(judged_texts)} PhraseBank 50Agree sentences")
    model, tokenizer = O.load_source(args.model)
    model.set_attn_implementation("eager")
    model.eval()
    feeds = {name: O.length_sorted_feeds(tokenizer, texts, args.max_length) for name, texts in
             (("calibration", calibration_texts), ("selection", selection_texts), ("judged", judged_texts))}
    example = O._encode(tokenizer, O.CHECK_TEXTS[:2], args.max_length)
    result = {"cpu": cpu_line(), "model": args.model, "alphas": args.alphas, "selection": {}, "chosen": {}}
    with tempfile.TemporaryDirectory() as folder:
        fp32 = os.path.join(folder, "fp32.onnx")
        O._write_graph(O.LogitsOnly(model).eval(), example, fp32, 18, False, True)
        sessions = {"fp32": O._session(fp32, args.threads)}
        reference = {k: O._run_feeds(sessions["fp32"], f).argmax(-1) for k, f in feeds.items() if k != "calibration"}
        graphs = {}
        for alpha in args.alphas:
            smoothed = os.path.join(folder, f"smoothed_{alpha:g}.onnx")
            O.export_smoothed(model, feeds["calibration"], alpha, smoothed, example)
            for recipe in RECIPES:
                path = os.path.join(folder, f"{recipe}_{alpha:g}.onnx")
                O.quantize_int8(smoothed, path, recipe, model.config, presmoothed=True)
                labels = O._run_feeds(O._session(path, args.threads), feeds["selection"]).argmax(-1)
                agreement = float(np.mean(labels == reference["selection"]))
                result["selection"].setdefault(recipe, {})[f"{alpha:g}"] = agreement
                graphs[(recipe, alpha)] = path
                print(f"alpha {alpha:.2f} {recipe:28s} selection agreement {agreement:.4%}", flush=True)
        plain = os.path.join(folder, "dynamic-per-channel.onnx")
        O.quantize_int8(fp32, plain, "dynamic-per-channel", model.config)
        judged = {"dynamic-per-channel": plain}
        for recipe in RECIPES:
            scores = result["selection"][recipe]
            alpha = max(args.alphas, key=lambda a: (scores[f"{a:g}"], -a))
            result["chosen"][recipe] = alpha
            judged[f"{recipe} (alpha {alpha:g})"] = graphs[(recipe, alpha)]
        rows = {}
        for name, path in judged.items():
            sessions[name] = O._session(path, args.threads)
            labels = O._run_feeds(sessions[name], feeds["judged"]).argmax(-1)
            rows[name] = {"agreement": float(np.mean(labels == reference["judged"])),
                          "flips": int(np.sum(labels != reference["judged"])),
                          "size_mb": os.path.getsize(path) / 1e6}
        rows["fp32"] = {"agreement": 1.0, "flips": 0, "size_mb": os.path.getsize(fp32) / 1e6}
        timing = O.length_sorted_feeds(tokenizer, judged_texts[::4], args.max_length)  # every 4th text
        timed = sum(len(f["rows"]) for f in timing)
        speed = samples_per_s(sessions, timing, 3)
        fp32_speed = speed["fp32"]
        for name in rows:
            rows[name]["samples_per_s"] = speed[name]
            rows[name]["speedup_vs_fp32"] = rows[name]["samples_per_s"] / fp32_speed
    result["judged"] = rows
    print(f"\n{len(judged_texts)} PhraseBank 50Agree sentences, agreement with the fp32 graph; speed on {timed} of "
          f"them, {args.threads} threads")
    print(f"{'graph':44s} {'agreement':>10s} {'flips':>6s} {'samples/s':>10s} {'x fp32':>7s} {'MB':>6s}")
    for name, r in sorted(rows.items(), key=lambda kv: kv[0] != "fp32"):
        print(f"{name:44s} {r['agreement']:10.2%} {r['flips']:6d} {r['samples_per_s']:10.0f} "
              f"{r['speedup_vs_fp32']:7.2f} {r['size_mb']:6.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
