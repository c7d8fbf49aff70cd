"""``python -m finlight seeds --config configs/X.yaml --seeds 1 2 3 [--trainer.max_epochs 5 …]``.

One configuration, several training seeds, one command: for each seed, ``fit`` and then ``test`` of that fit's
best checkpoint in the same process, so each seed's folder ``logs/<experiment>/version_N/`` holds its config,
curves, ``test_metrics.json`` and ``test_predictions.csv``. Then the ``report`` of those runs (mean ± std over
seeds) goes to ``reports/<experiment>_seeds/``.

Only ``seed_everything`` changes between runs (weight init, dropout, batch order): the data split keeps its own
``data.seed``, so every seed is scored on the same test set and runs pair up for significance tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finlight.errors import FinlightError


def seeds_main(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m finlight seeds",
        description="Fit and test one config once per seed, then report mean ± std. Other arguments "
                    "(--trainer.max_epochs 3, --model.init_args.learning_rate 1e-4 …) go to every fit.")
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for fit")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--experiment", default=None, help="run name under logs/ (default: the config's name)")
    parser.add_argument("--report_dir", default=None, help="default: reports/<experiment>_seeds")
    args, overrides = parser.parse_known_args(argv)
    if any(o in ("--seed_everything", "--experiment") or o.startswith("--seed_everything=") for o in overrides):
        raise FinlightError("seeds: set the seeds with --seeds, not --seed_everything")
    for path in args.config:
        if not Path(path).is_file():
            raise FinlightError(f"--config {path}: no such file")
    name = args.experiment or Path(args.config[-1]).stem
    configs = [a for path in args.config for a in ("--config", path)]

    from finlight.cli import run_cli

    run_dirs = []
    for i, seed in enumerate(args.seeds, 1):
        print(f"finlight seeds: seed {seed} ({i}/{len(args.seeds)}) — fit, then test of the best checkpoint")
        cli = run_cli(["fit", *configs, "--seed_everything", str(seed), "--experiment", name, *overrides])
        trainer = cli.trainer
        callback = trainer.checkpoint_callback
        if callback is None or not callback.best_model_path:
            raise FinlightError(f"seeds: the fit with seed {seed} saved no best checkpoint (checkpointing off, or "
                                f"no validation?); cannot test it")
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=callback.best_model_path)
        run_dirs.append(trainer.log_dir)

    from finlight.report import build_report

    report_dir = args.report_dir or str(Path("reports") / f"{name}_seeds")
    result = build_report(run_dirs, report_dir)
    group = result["groups"][0]
    summary = ", ".join(f"{m.split('/')[-1]} {group[f'{m}_mean']:.4f}"
                        + (f" ± {group[f'{m}_std']:.4f}" if group[f"{m}_std"] is not None else "")
                        for m in ("test/acc", "test/macro_f1"))
    print(f"finlight seeds: {name}, seeds {args.seeds}: {summary} (runs: {', '.join(run_dirs)}) → {report_dir}/report.md")
    return run_dirs
