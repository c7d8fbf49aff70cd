"""Controlled comparison: the same from-scratch bert-tiny-shaped classifier with and without PerforatedAI dendrites.

    OMP_NUM_THREADS=1 python benchmarks/dendrites_seeds.py [--pair phrasebank|toxicity] [--seeds 1 2 3]
        [--max_epochs 20] [--workdir .]

For each config of the pair (they differ only in ``model.class_path`` and ``model.init_args.dendrites``) it runs
``python -m finlight seeds`` (fit, then test of the best checkpoint by validation macro-F1, per seed) with the
latency profiler on (batch 1 and 32, one thread), then ``python -m finlight report`` with the baseline as
reference (paired McNemar / bootstrap per seed). It then prints, from what those runs wrote: mean ± std of test
macro-F1, parameters of the tested model (the dendritic count includes perforatedai's candidate dendrite
weights, which exist from the start), weight size on disk, batch-1 latency, the epochs where the tracker
restructured, and per-epoch validation macro-F1 of every run. Ratios are against the baseline measured in the
same invocation.

Both configs get the same ``--trainer.max_epochs`` (the only override). Selection is on validation; test is read
once per run. Same seed → same numbers (deterministic mode, a saved tokenizer per run). The profiler's latencies
come from separate runs on a shared CPU and swing 3-5x, so the first seed's two tested checkpoints are also timed
in turns in one process at batch 1 on the test texts (median), which gives the latency ratio to trust.
``--summary_only`` re-reads finished runs. The toxicity pair fine-tunes ``prajjwal1/bert-tiny`` (needs the hub).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PAIRS = {
    "phrasebank": ("configs/bert_tiny_phrasebank_baseline.yaml", "configs/dendritic_bert_tiny_phrasebank.yaml"),
    "toxicity": ("configs/bert_tiny_toxicity.yaml", "configs/bert_tiny_toxicity_dendritic.yaml"),
}
ROOT = Path(__file__).resolve().parent.parent
LATENCY = ["--trainer.callbacks+=finlight.core.callbacks.LatencyProfiler",
           "--trainer.callbacks.batch_sizes=[1, 32]", "--trainer.callbacks.iterations=50",
           "--trainer.callbacks.num_threads=1"]


def scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def tested_runs(workdir: Path, experiment: str) -> list[Path]:
    return sorted((p for p in (workdir / "logs" / experiment).glob("version_*") if (p / "test_metrics.json").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))


def summarize(run_dir: Path) -> dict:
    config = (run_dir / "config.yaml").read_text()
    seed = next(int(line.split(":")[1]) for line in config.splitlines() if line.startswith("seed_everything:"))
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    metrics = metrics.get("metrics", metrics)
    latency = json.loads((run_dir / "latency.json").read_text())
    switches = scalars(run_dir, "dendrites/switch")
    return {"seed": seed, "test_macro_f1": metrics["test/macro_f1"], "test_acc": metrics["test/acc"],
            "parameters": latency["parameters"], "disk_mb": latency["disk_size_mb"],
            "ms_bs1": latency["batches"]["1"]["ms_mean"], "val_f1": scalars(run_dir, "val/macro_f1"),
            "switch_epochs": [i for i, s in enumerate(switches) if s > 0],
            "dendrites": int(max(scalars(run_dir, "dendrites/count") or [0]))}


def paired_latency(checkpoints: dict[str, str], workdir: Path, texts: list[str]) -> dict[str, float]:
    """Median batch-1 latency (ms) of each checkpoint's model, timed in turns in this process on one thread
    (the profiler's figures come from separate runs on a shared CPU and swing 3-5x; turns share the noise)."""
    import numpy as np
    import torch

    from _timing import timed
    from finlight.core.restore import restore_from_checkpoint

    torch.set_num_threads(1)
    models = {}
    for role, path in checkpoints.items():
        model, tokenizer, _, _ = restore_from_checkpoint(str(workdir / path))
        models[role] = (model.eval(), tokenizer)
    times = {role: [] for role in models}
    with torch.inference_mode():
        for i, text in enumerate(texts * 2):
            for role, (model, tokenizer) in models.items():
                encoded = tokenizer([text], truncation=True, max_length=64, return_tensors="pt")
                ids, mask = encoded["input_ids"], encoded["attention_mask"]
                seconds, _ = timed(lambda: model(input_ids=ids, attention_mask=mask))
                if i >= 20:  # warm-up
                    times[role].append(seconds)
    return {role: 1000 * float(np.median(t)) for role, t in times.items()}


def mean_std(values: list[float]) -> str:
    import numpy as np

    v = np.asarray(values, float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="phrasebank")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--workdir", default=str(ROOT), help="where logs/, checkpoints/, reports/ go")
    parser.add_argument("--summary_only", action="store_true", help="only re-read finished runs")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    groups = {}
    for role, config in zip(("baseline", "dendritic"), PAIRS[args.pair]):
        experiment = f"dendrites_bench_{args.pair}_{role}"
        groups[role] = experiment
        if args.summary_only:
            continue
        for folder in ("logs", "checkpoints"):  # this script's own earlier outputs: a fresh comparison each time
            shutil.rmtree(workdir / folder / experiment, ignore_errors=True)
        command = [sys.executable, "-m", "finlight", "seeds", "--config", str(ROOT / config), "--seeds",
                   *map(str, args.seeds), "--experiment", experiment, "--report_dir",
                   str(workdir / "bench_out" / f"{experiment}_seeds"), "--trainer.max_epochs", str(args.max_epochs),
                   "--trainer.enable_progress_bar=false", *LATENCY]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=workdir, env=env, check=True)
    report_dir = workdir / "reports" / f"dendrites_{args.pair}"
    subprocess.run([sys.executable, "-m", "finlight", "report", str(workdir / "logs" / groups["baseline"]),
                    str(workdir / "logs" / groups["dendritic"]), "--baseline", groups["baseline"],
                    "--output_dir", str(report_dir)], cwd=workdir, env=env, check=True)

    runs = {role: [summarize(r) for r in tested_runs(workdir, exp)] for role, exp in groups.items()}
    base = runs["baseline"]
    print(f"\n## {args.pair}: baseline vs dendritic, seeds {args.seeds}, max_epochs {args.max_epochs}\n")
    print("| model | runs | test macro-F1 (mean ± std) | test acc | parameters | size MB | ms @bs1 | dendrite sets | "
          "switch epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for role, rows in runs.items():
        params = sorted({r["parameters"] for r in rows})
        ratio = sum(r["ms_bs1"] for r in rows) / max(1e-9, sum(r["ms_bs1"] for r in base))
        print(f"| {role} | {len(rows)} | {mean_std([r['test_macro_f1'] for r in rows])} | "
              f"{mean_std([r['test_acc'] for r in rows])} | {'/'.join(f'{p:,}' for p in params)} "
              f"(×{params[-1] / max(r['parameters'] for r in base):.2f}) | "
              f"{'/'.join(f'{m:.2f}' for m in sorted({round(r['disk_mb'], 2) for r in rows}))} | "
              f"{mean_std([r['ms_bs1'] for r in rows])} (×{ratio:.2f}) | "
              f"{', '.join(str(r['dendrites']) for r in rows)} | "
              f"{'; '.join(str(r['switch_epochs']) for r in rows)} |")
    print("\nper-epoch val/macro_f1 (epoch 0 first; the sanity check is not logged):")
    for role, rows in runs.items():
        for r in rows:
            print(f"  {role:9s} seed {r['seed']}: test F1 {r['test_macro_f1']:.4f}; val " +
                  " ".join(f"{v:.3f}" for v in r["val_f1"]))
    first = {role: json.loads((tested_runs(workdir, exp)[0] / "test_metrics.json").read_text())["checkpoint"]
             for role, exp in groups.items()}
    with open(tested_runs(workdir, groups["baseline"])[0] / "test_predictions.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    latency = paired_latency(first, workdir, texts)
    print("\nbatch-1 latency, first seed's tested checkpoints timed in turns in one process (median ms): " +
          ", ".join(f"{role} {ms:.2f}" for role, ms in latency.items()) +
          f"; dendritic / baseline = {latency['dendritic'] / latency['baseline']:.2f}")
    print(f"\nfull report (paired McNemar / bootstrap per seed, curves): {report_dir}/report.md")


if __name__ == "__main__":
    main()
