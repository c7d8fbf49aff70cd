"""Multi-seed SAPLING comparison: a deep encoder dropped to ``--target_layers`` by each scoring method vs a
model of that depth trained directly, on real data.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/sapling_seeds.py \
        --config configs/sapling_bert_phrasebank.yaml --seeds 1 2 3 --epochs 12 --out bench_out/sapling_seeds

Variants (``--variants``): ``ablation``, ``block_influence``, ``angular_distance`` (the config's
SuccessiveLayerDrop with that method, one layer per drop), ``angular_distance_n<N>`` (the block of ``N``
consecutive layers with the smallest angular distance goes at once, as Gromov et al.) and ``direct`` (no
layer drop, ``model.scratch.num_layers`` set to the target depth from the start); ``full`` (no drop, the
config's depth) is a reference. Each variant's YAML is written under ``--out/configs`` and each seed is a
normal finlight run (``logs/<exp>/``). The default variants are the three methods and ``direct``.

Honest selection: every epoch's checkpoint is kept; the one tested is the best ``val/macro_f1`` **among the
checkpoints already at the target depth** (a SAPLING run's overall best is often a deeper model from before
the drops, which would not be a 2-layer result). The drop tolerance is disabled (``tolerance: 1.0``) so every
run reaches the target depth; a run that did not is reported with its depth. Test metrics come from
``trainer.test`` on that checkpoint (written to the run's ``test_metrics.json``), mean ± std (ddof=1) over
seeds; size, parameters and throughput (single thread, sorted dynamic batches, the whole test split) from
`compression_report.measure` on the same checkpoint — measured again for every run back to back at the end,
so that the machine's load at the time of each fit does not skew the comparison.
Writes ``sapling_seeds.md``, ``sapling_seeds.csv``, ``runs.json`` and the ``report/`` of every run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

METHODS = ("ablation", "block_influence", "angular_distance")


def variant_config(base: dict, variant: str, target_layers: int) -> dict:
    """The base config changed for one variant (a new dict)."""
    config = copy.deepcopy(base)
    callbacks = config.setdefault("trainer", {}).get("callbacks") or []
    drop = [c for c in callbacks if str(c.get("class_path", "")).endswith("SuccessiveLayerDrop")]
    others = [c for c in callbacks if c not in drop]
    block = re.fullmatch(r"angular_distance_n(\d+)", variant)
    if variant in METHODS or block:
        if not drop:
            raise SystemExit("the base config has no SuccessiveLayerDrop callback")
        args = drop[0].setdefault("init_args", {})
        args.update(method="angular_distance" if block else variant, target_layers=target_layers, tolerance=1.0,
                    angular_n=int(block.group(1)) if block else 1)
        args.pop("target_param_ratio", None)
        config["trainer"]["callbacks"] = others + [drop[0]]
    elif variant in ("direct", "full"):
        config["trainer"]["callbacks"] = others
        if variant == "direct":
            config["model"]["init_args"]["scratch"]["num_layers"] = target_layers
    else:
        raise SystemExit(f"unknown variant {variant!r}: use {', '.join(METHODS)}, angular_distance_n<N>, direct "
                         "or full")
    config.setdefault("checkpoint", {})["save_top_k"] = -1
    return config


def select_checkpoint(folder: str, target_layers: int) -> tuple[str, int, float]:
    """The best-validation checkpoint at the target depth (or at the shallowest depth the run reached)."""
    from compression_report import best_by_depth

    by_depth = best_by_depth(folder)
    depth = target_layers if target_layers in by_depth else min(by_depth)
    if depth != target_layers:  # a drop was undone, or the epochs ran out: say so, the row is not a target-depth one
        print(f"sapling_seeds: {folder} never reached {target_layers} layers; testing its shallowest depth, {depth} "
              f"(its 'layers' column says so)", file=sys.stderr)
    return by_depth[depth][0], depth, by_depth[depth][1]


def run_one(config_path: str, variant: str, seed: int, epochs: int, target_layers: int, test_data) -> dict:
    from compression_report import measure
    from finlight.cli import run_cli

    experiment = f"sapling_seeds_{variant}"
    started = time.perf_counter()
    cli = run_cli(["fit", "--config", config_path, "--seed_everything", str(seed), "--experiment", experiment,
                   "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"])
    fit_seconds = time.perf_counter() - started
    trainer = cli.trainer
    chosen, depth, val_f1 = select_checkpoint(trainer.checkpoint_callback.dirpath, target_layers)
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=chosen, verbose=False)
    with open(os.path.join(trainer.log_dir, "test_metrics.json"), encoding="utf-8") as handle:
        tested = json.load(handle)["metrics"]
    texts, labels, max_length = test_data
    speed = measure(chosen, None, texts, labels, max_length, 32, 1)
    return {"variant": variant, "seed": seed, "run_dir": trainer.log_dir, "checkpoint": chosen, "layers": depth,
            "val_macro_f1": val_f1, "test_acc": float(tested["test/acc"]),
            "test_macro_f1": float(tested["test/macro_f1"]), "measured_acc": speed["acc"],
            "size_mb": speed["size_mb"], "params": speed["params"], "samples_per_s": speed["samples_per_s"],
            "tokens_per_s": speed["tokens_per_s"], "fit_seconds": fit_seconds}


def summarize(runs: list[dict]) -> list[dict]:
    from finlight.report.compare import mean_std

    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        group = [r for r in runs if r["variant"] == variant]
        row = {"variant": variant, "seeds": len(group), "layers": "/".join(sorted({str(r["layers"]) for r in group}))}
        for key in ("test_acc", "test_macro_f1", "val_macro_f1", "size_mb", "params", "samples_per_s",
                    "tokens_per_s", "fit_seconds"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in group])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def pm(row, key, digits):
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    lines = ["| variant | layers | seeds | test acc | test macro-F1 | val macro-F1 | size MB | params | samples/s "
             "| tokens/s | fit s |", "|" + " --- |" * 11]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['layers']} | {r['seeds']} | {pm(r, 'test_acc', 4)} | "
                     f"{pm(r, 'test_macro_f1', 4)} | {pm(r, 'val_macro_f1', 4)} | {r['size_mb_mean']:.2f} | "
                     f"{r['params_mean']:,.0f} | {pm(r, 'samples_per_s', 0)} | {pm(r, 'tokens_per_s', 0)} | "
                     f"{pm(r, 'fit_seconds', 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/sapling_bert_phrasebank.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=[*METHODS, "direct"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--target_layers", type=int, default=2)
    parser.add_argument("--out", default="bench_out/sapling_seeds")
    parser.add_argument("--no_speed_pass", action="store_true",
                        help="keep the throughput measured after each fit (default: all measured again at the end)")
    args = parser.parse_args(argv)

    import torch
    import yaml

    from compression_report import test_split
    from finlight.report.compare import build_report

    torch.set_num_threads(1)
    with open(args.config, encoding="utf-8") as handle:
        base = yaml.safe_load(handle)
    out = Path(args.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    test_data = test_split(args.config)
    results_path = out / "runs.json"
    runs = json.loads(results_path.read_text()) if results_path.exists() else []  # resumable
    for variant in args.variants:
        path = out / "configs" / f"sapling_seeds_{variant}.yaml"
        path.write_text(f"# python -m finlight fit --config {path}\n"
                        + yaml.safe_dump(variant_config(base, variant, args.target_layers), sort_keys=False))
        for seed in args.seeds:
            if any(r["variant"] == variant and r["seed"] == seed for r in runs):
                continue
            runs.append(run_one(str(path), variant, seed, args.epochs, args.target_layers, test_data))
            results_path.write_text(json.dumps(runs, indent=2))
            print(f"sapling_seeds: {variant} seed {seed}: {runs[-1]['layers']} layers, test acc "
                  f"{runs[-1]['test_acc']:.4f}, macro-F1 {runs[-1]['test_macro_f1']:.4f}", flush=True)
    selected = [r for r in runs if r["variant"] in args.variants]
    if not args.no_speed_pass:
        # throughput measured right after each fit depends on what else ran then: measure every selected
        # checkpoint again, back to back, so the samples/s of the variants are comparable
        from compression_report import measure

        texts, labels, max_length = test_data
        for r in selected:
            speed = measure(r["checkpoint"], None, texts, labels, max_length, 32, 1)
            r["samples_per_s"], r["tokens_per_s"] = speed["samples_per_s"], speed["tokens_per_s"]
        results_path.write_text(json.dumps(runs, indent=2))
    rows = summarize(selected)
    columns = list(rows[0])
    with open(out / "sapling_seeds.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows)
    (out / "sapling_seeds.md").write_text(table)
    build_report([r["run_dir"] for r in runs if r["variant"] in args.variants], str(out / "report"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
