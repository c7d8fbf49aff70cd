"""Mixed INT8: which nodes to leave in fp32 so that the quantized classifier keeps the fp32 model's decisions, and
what that costs in speed — chosen without looking at the texts it is judged on, then judged once.

For each recipe (default: smooth-dynamic-per-channel at export-onnx's SMOOTH_ALPHA, and dynamic-per-channel)
every node it quantizes is quantized alone and ranked by the KL divergence of its logits from the fp32 graph's
on 1,000 earnings-call sentences (finlight.deploy.int8_sensitivity). The recipe is then applied with the k
top-ranked nodes in fp32 for each k of a grid; k is chosen as the smallest reaching the agreement target (99.5 %)
on 2,000 earnings-call sentences of other transcripts (unlabeled: agreement needs no label). Every grid point is
also measured on the 4,846 PhraseBank 50Agree sentences (the issue's agreement set) and timed — samples/s of ONNX
Runtime on longest-first batches of 32, tokenization excluded, median of 3 rounds in which every graph runs in
turn, as a ratio to the fp32 graph of the same rounds — so the whole curve is visible; the chosen k is marked.

    HF_HUB_OFFLINE=1 python benchmarks/int8_mixed.py [--model bench_out/minilm_ft_hf] \
        [--out reports/onnx_int8_minilm/mixed.json]

``--model``: a fine-tuned Hugging Face classifier directory (see benchmarks/int8_smoothing.py for the one of
reports/onnx_int8_minilm/). The chosen node names go to ``export-onnx --int8_keep_fp32``.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_smoothing import ect_sets, phrasebank_50agree, samples_per_s  # noqa: E402
from machine import cpu_line  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "bench_out", "minilm_ft_hf"))
    parser.add_argument("--recipes", nargs="+", default=["smooth-dynamic-per-channel", "dynamic-per-channel"])
    parser.add_argument("--grid", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8, 12])
    parser.add_argument("--target", type=float, default=0.995)
    parser.add_argument("--ranking_texts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "onnx_int8_minilm", "mixed.json"))
    parser.add_argument("--quick", action="store_true", help="a check of the script: 200 texts a set, the first "
                        "recipe, k 0 and 1, 1 timing round (output under bench_out/)")
    args = parser.parse_args()
    if args.quick:
        args.recipes, args.grid, args.ranking_texts = args.recipes[:1], [0, 1], 100
        args.out = os.path.join(ROOT, "bench_out", "int8_mixed_quick.json")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"--model {args.model}: not a Hugging Face model directory (benchmarks/inference.py makes one)")
    torch.set_num_threads(args.threads)
    from finlight.deploy import int8_sensitivity as S
    from finlight.deploy import onnx as O

    print(cpu_line(), flush=True)
    calibration_texts, selection_texts = ect_sets()  # int8_smoothing.py's sets
    judged_texts = phrasebank_50agree()
    if args.quick:
        calibration_texts, selection_texts, judged_texts = calibration_texts[:200], selection_texts[:200], \
            judged_texts[:200]
    model, tokenizer = O.load_source(args.model)
    model.set_attn_implementation("eager")
    model.eval()
    feeds = {name: O.length_sorted_feeds(tokenizer, texts, args.max_length) for name, texts in (
        ("calibration", calibration_texts), ("ranking", selection_texts[:args.ranking_texts]),
        ("selection", selection_texts), ("judged", judged_texts))}
    example = O._encode(tokenizer, O.CHECK_TEXTS[:2], args.max_length)
    result = {"cpu": cpu_line(), "model": args.model, "smooth_alpha": O.SMOOTH_ALPHA, "target": args.target,
              "texts": {k: sum(len(f["rows"]) for f in v) for k, v in feeds.items()}, "recipes": {}}
    print(f"calibration / ranking / selection: {result['texts']['calibration']} / {result['texts']['ranking']} / "
          f"{result['texts']['selection']} earnings-call sentences; judged on {len(judged_texts)} PhraseBank 50Agree",
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        fp32 = os.path.join(folder, "fp32.onnx")
        O._write_graph(O.LogitsOnly(model).eval(), example, fp32, 18, False, True)
        session = O._session(fp32, args.threads)
        reference = {k: O._run_feeds(session, f) for k, f in feeds.items() if k != "calibration"}
        graphs = {"fp32": fp32}
        for recipe in args.recipes:
            smooth = bool(O.INT8_RECIPES[recipe].get("smooth"))
            source = fp32
            if smooth:
                source = os.path.join(folder, "smoothed.onnx")
                O.export_smoothed(model, feeds["calibration"], O.SMOOTH_ALPHA, source, example)

            def quantize(src, dst, only, exclude, recipe=recipe, smooth=smooth):
                O.quantize_int8(src, dst, recipe, model.config, presmoothed=smooth, keep_fp32=exclude, only=only)

            def run(path, name="ranking"):
                return O._run_feeds(O._session(path, args.threads), feeds[name])

            nodes = S.candidate_nodes(source)
            print(f"\n{recipe}: ranking {len(nodes)} nodes, each quantized alone", flush=True)
            start = time.perf_counter()
            ranking = S.rank_nodes(source, quantize, run, nodes, progress=lambda line: print("  " + line, flush=True))
            rank_s = time.perf_counter() - start
            rows = {}
            for k in sorted(set(min(k, len(ranking)) for k in args.grid)):
                path = os.path.join(folder, f"{recipe}_keep{k}.onnx")
                quantize(source, path, None, [s.node for s in ranking[:k]])
                session = O._session(path, args.threads)
                agree = {name: float(np.mean(O._run_feeds(session, feeds[name]).argmax(-1)
                                             == reference[name].argmax(-1))) for name in ("selection", "judged")}
                rows[k] = {"selection_agreement": agree["selection"], "judged_agreement": agree["judged"],
                           "judged_flips": int(round((1 - agree["judged"]) * len(judged_texts))),
                           "size_mb": os.path.getsize(path) / 1e6}
                graphs[f"{recipe} keep {k}"] = path
                print(f"  keep {k:2d} in fp32: selection {agree['selection']:.2%}, judged {agree['judged']:.2%}",
                      flush=True)
            k, reached = S.pick_k({k: r["selection_agreement"] for k, r in rows.items()}, args.target)
            result["recipes"][recipe] = {
                "ranking": [vars(s) for s in ranking], "ranking_s": rank_s,
                "grid": {str(k): r for k, r in rows.items()},
                "chosen_k": k, "target_reached_on_selection": reached,
                "keep_fp32": [s.node for s in ranking[:k]]}
        timing = O.length_sorted_feeds(tokenizer, judged_texts[::4], args.max_length)  # every 4th text
        timed = sum(len(f["rows"]) for f in timing)
        sessions = {name: O._session(path, args.threads) for name, path in graphs.items()}
        speed = samples_per_s(sessions, timing, 1 if args.quick else 3)
        fp32_speed = result["fp32_samples_per_s"] = speed["fp32"]
        for recipe, r in result["recipes"].items():
            for k, row in r["grid"].items():
                row["samples_per_s"] = speed[f"{recipe} keep {k}"]
                row["speedup_vs_fp32"] = row["samples_per_s"] / fp32_speed
    print(f"\n{len(judged_texts)} PhraseBank 50Agree sentences, agreement with the fp32 graph (chosen k: the smallest "
          f"reaching {args.target:.1%} on the selection texts, *); speed on {timed} of them, {args.threads} threads, "
          f"fp32 {fp32_speed:.0f} samples/s")
    print(f"{'recipe':28s} {'fp32 nodes':>10s} {'selection':>10s} {'judged':>8s} {'flips':>6s} {'x fp32':>7s} "
          f"{'MB':>6s}")
    for recipe, r in result["recipes"].items():
        for k, row in r["grid"].items():
            mark = "*" if int(k) == r["chosen_k"] else " "
            print(f"{recipe:28s} {k:>9s}{mark} {row['selection_agreement']:10.2%} {row['judged_agreement']:8.2%} "
                  f"{row['judged_flips']:6d} {row['speedup_vs_fp32']:7.2f} {row['size_mb']:6.1f}")
        print(f"  {recipe}: most sensitive first: " + ", ".join(
            f"{s['node']} ({s['kl']:.1e})" for s in r["ranking"][:max(r['chosen_k'], 4)]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
