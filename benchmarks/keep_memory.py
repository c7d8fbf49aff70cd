"""What keeping freed memory buys a CPU training step (finlight/core/cpu_memory.py): on against off, interleaved.

    HF_HUB_OFFLINE=1 python benchmarks/keep_memory.py [--rounds 3]      # ~40 s a run, 3 runs a round

Each run is a fresh process fitting finlight's bf16 MiniLM step of benchmarks/step_profile.py (PhraseBank, batch 32,
max_length 64) with ``FINLIGHT_KEEP_FREED_MEMORY`` 1 or 0, and the HF Trainer's bf16 group_by_length step as the
reference; steps 5-29 of the first epoch are timed and their minor page faults counted (``getrusage``). Prints the
mean step and faults per step of every run, then the medians and the ratios off / on and HF / on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
FIRST, LAST = 5, 30


class FaultRecorder:
    """Step time and minor page faults of steps [FIRST, LAST), driven by either framework's step hooks."""

    def __init__(self, result: str):
        self.result, self.step, self.times, self.faults = result, 0, [], []

    def begin(self) -> None:
        self.faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.started = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.started)
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults0)
        self.step += 1
        if self.step < LAST:
            return
        times, faults = self.times[FIRST:], self.faults[FIRST:]
        Path(self.result).write_text(json.dumps({"step_ms": 1e3 * statistics.mean(times),
                                                 "faults_per_step": statistics.mean(faults)}))
        os._exit(0)  # measured; the rest of the fit is not needed


def one_run(framework: str, keep: str, args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        env = {**os.environ, "FINLIGHT_KEEP_FREED_MEMORY": keep}
        done = subprocess.run([sys.executable, __file__, "--framework", framework, "--result", str(result),
                               "--threads", str(args.threads)], env=env, capture_output=True, text=True)
        if not result.exists():
            sys.exit(f"keep_memory: {framework} (keep={keep}) failed\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--framework", choices=["finlight", "hf"], help=argparse.SUPPRESS)  # internal: one run
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.framework:
        import step_profile
        import training as bench

        run_args = argparse.Namespace(model=bench.minilm_dir(), data=str(bench.PHRASEBANK))
        run = step_profile.run_finlight if args.framework == "finlight" else step_profile.run_hf
        run(run_args, FaultRecorder(args.result), Path(tempfile.mkdtemp(prefix="keep_memory_")))
        sys.exit(f"keep_memory: {args.framework} ended before step {LAST}")

    from machine import cpu_line

    print(cpu_line())
    print(f"bf16 MiniLM step, batch 32, steps {FIRST}-{LAST - 1} of epoch 1; 4 KiB pages")
    runs: dict = {"finlight keep": [], "finlight off": [], "HF Trainer": []}
    for r in range(1, args.rounds + 1):
        for name, framework, keep in (("finlight keep", "finlight", "1"), ("finlight off", "finlight", "0"),
                                      ("HF Trainer", "hf", "1")):
            result = one_run(framework, keep, args)
            runs[name].append(result)
            print(f"  round {r} {name:13s} step {result['step_ms']:6.1f} ms, page faults per step "
                  f"{result['faults_per_step']:7.0f} ({result['faults_per_step'] * 4 / 1024:.0f} MB)", flush=True)
    median = {name: statistics.median(r["step_ms"] for r in results) for name, results in runs.items()}
    faults = {name: statistics.median(r["faults_per_step"] for r in results) for name, results in runs.items()}
    print("\nmedian step ms / faults per step: " +
          ", ".join(f"{name} {median[name]:.1f} / {faults[name]:.0f}" for name in runs))
    per_round = ", ".join(f"{off['step_ms'] / keep['step_ms']:.3f}"
                          for off, keep in zip(runs["finlight off"], runs["finlight keep"]))
    print(f"off / keep = {median['finlight off'] / median['finlight keep']:.3f} (per round: {per_round}); "
          f"HF / keep = {median['HF Trainer'] / median['finlight keep']:.3f}")


if __name__ == "__main__":
    main()
