"""Where a training step's time goes: finlight (Lightning) against the HF Trainer, op by op.

    HF_HUB_OFFLINE=1 python benchmarks/step_profile.py            # both frameworks, each in a fresh process (~2 min)
    HF_HUB_OFFLINE=1 python benchmarks/step_profile.py --precision fp32   # fp32 steps instead of bf16 autocast

Same model (all-MiniLM-L6-v2), data (PhraseBank AllAgree, finlight's split), batch 32, max_length 64, lr 1e-4, clip
1.0 and (by default) bf16 autocast as benchmarks/training.py. In each framework's own step hooks, steps 10-29 of
the first epoch run under ``torch.profiler`` (CPU activities); the mean wall time of steps 5-29 (profiler overhead
included, alike for both) and the self-CPU time per step of the top operators are printed side by side. If the two
columns match, a remaining wall-time gap between the frameworks is not in the step; if they differ, the table says
where.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
FIRST_PROFILED, LAST = 10, 30  # steps [10, 30) are profiled; timing from step 5


class Recorder:
    """Step timer + profiler window, driven by either framework's begin/end-of-step hooks."""

    def __init__(self, result: str):
        self.result, self.step, self.times, self.profiler, self.started = result, 0, [], None, 0.0

    def begin(self) -> None:
        import torch

        if self.step == FIRST_PROFILED:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
        self.started = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.started)
        self.step += 1
        if self.step < LAST:
            return
        self.profiler.__exit__(None, None, None)
        steps = LAST - FIRST_PROFILED
        ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in self.profiler.key_averages()}  # ms per step
        timed = self.times[5:]
        Path(self.result).write_text(json.dumps({"step_ms": 1e3 * sum(timed) / len(timed), "steps": len(timed),
                                                 "ops_ms_per_step": ops}))
        os._exit(0)  # the measurement is complete; the rest of the fit is not needed


def run_finlight(args, recorder: Recorder, workdir: Path) -> None:
    import lightning.pytorch as pl
    import yaml

    import training as bench
    from finlight.cli import run_cli

    class Hooks(pl.Callback):
        def on_train_batch_start(self, *_):
            recorder.begin()

        def on_train_batch_end(self, *_):
            recorder.end()

    bench.ProfileHooks = Hooks  # reachable by class path for the CLI's callbacks list
    config = {
        "seed_everything": 42,
        "trainer": {"max_epochs": 1, "gradient_clip_val": 1.0, "enable_progress_bar": False,
                    "enable_model_summary": False, "enable_checkpointing": False,
                    "precision": "bf16-mixed" if args.precision == "bf16" else "32-true"},
        "model": {"class_path": "finlight.core.SequenceClassifier", "init_args": {
            "backbone": args.model, "learning_rate": 1e-4, "warmup_ratio": 0.1, "weight_decay": 0.01}},
        "data": {"class_path": "finlight.core.ClassificationDataModule", "init_args": {
            "path": args.data, "label_names": bench.LABELS, "max_length": 64, "batch_size": 32}},
    }
    path = workdir / "profile.yaml"
    path.write_text(yaml.safe_dump(config))
    os.chdir(workdir)
    run_cli(["fit", "--config", str(path), "--trainer.callbacks+=training.ProfileHooks"])


def run_hf(args, recorder: Recorder, workdir: Path) -> None:
    from transformers import Trainer, TrainerCallback

    import training as bench

    class Hooks(TrainerCallback):
        def on_step_begin(self, *_, **__):
            recorder.begin()

        def on_step_end(self, *_, **__):
            recorder.end()

    original = Trainer.__init__

    def with_hooks(self, *a, **k):  # training.hf_variant builds the Trainer: add the hooks to its callbacks
        k["callbacks"] = [*(k.get("callbacks") or []), Hooks()]
        original(self, *a, **k)

    Trainer.__init__ = with_hooks
    hf_args = argparse.Namespace(data=args.data, model=args.model, max_length=64, epochs=1, batch_size=32, lr=1e-4)
    bench.hf_variant(hf_args, workdir, bf16=args.precision == "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=["finlight", "hf"], help=argparse.SUPPRESS)  # internal: one side
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="HF directory (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15, help="operators shown")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 autocast in both frameworks (default) or fp32 in both")
    args = parser.parse_args()
    import torch

    import training as bench

    torch.set_num_threads(args.threads)
    args.model = args.model or bench.minilm_dir()
    args.data = args.data or str(bench.PHRASEBANK)
    if args.framework:
        workdir = Path(tempfile.mkdtemp(prefix=f"profile_{args.framework}_"))
        (run_finlight if args.framework == "finlight" else run_hf)(args, Recorder(args.result), workdir)
        sys.exit(f"step_profile: {args.framework} ended before step {LAST}")

    from machine import cpu_line

    print(cpu_line())
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for framework in ("finlight", "hf"):
            result = Path(folder) / f"{framework}.json"
            done = subprocess.run([sys.executable, __file__, "--framework", framework, "--result", str(result),
                                   "--model", args.model, "--data", args.data, "--threads", str(args.threads),
                                   "--precision", args.precision],
                                  capture_output=True, text=True)
            if not result.exists():
                sys.exit(f"step_profile: {framework} failed\n{done.stderr[-3000:]}")
            results[framework] = json.loads(result.read_text())
    fin, hf = results["finlight"], results["hf"]
    print(f"mean step ({args.precision}, batch 32): finlight {fin['step_ms']:.1f} ms, "
          f"HF Trainer {hf['step_ms']:.1f} ms "
          f"(finlight / HF = {fin['step_ms'] / hf['step_ms']:.3f}; {fin['steps']} steps each)")
    ops = sorted(set(fin["ops_ms_per_step"]) | set(hf["ops_ms_per_step"]),
                 key=lambda k: -max(fin["ops_ms_per_step"].get(k, 0), hf["ops_ms_per_step"].get(k, 0)))
    total_f, total_h = sum(fin["ops_ms_per_step"].values()), sum(hf["ops_ms_per_step"].values())
    print(f"\n{'operator (self CPU, ms per step)':42s} {'finlight':>9s} {'HF':>9s} {'share HF':>9s}")
    for key in ops[:args.top]:
        f, h = fin["ops_ms_per_step"].get(key, 0.0), hf["ops_ms_per_step"].get(key, 0.0)
        print(f"{key[:42]:42s} {f:9.1f} {h:9.1f} {100 * h / total_h:8.1f}%")
    print(f"{'all operators':42s} {total_f:9.1f} {total_h:9.1f}")


if __name__ == "__main__":
    main()
