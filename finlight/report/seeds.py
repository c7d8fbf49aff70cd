"""``python -m finlight seeds --config configs/X.yaml --seeds 1 2 3 [--trainer.max_epochs 5 …]``.

One configuration, several training seeds, one command: for each seed, ``fit`` and then ``test`` of one of that
fit's checkpoints in the same process, so each seed's folder ``logs/<experiment>/version_N/`` holds its config,
curves, ``test_metrics.json`` and ``test_predictions.csv``. Then the ``report`` of those runs (mean ± std over
seeds) goes to ``reports/<experiment>_seeds/``.

``--select`` says which checkpoint is tested (`finlight.prune.checkpoint_selection`): ``best`` (default: the best
monitored validation score), ``last`` (what the fit ended with) or ``final_depth`` (the best validation score among
the checkpoints with the architecture the run ended with: for layer-dropping runs, whose overall best is often a
deeper model from before the drops). ``test_metrics.json`` records the choice under ``"selected"``.

Only ``seed_everything`` changes between runs: weight init (new heads, LoRA) and dropout. The data split keeps its
own ``data.seed``, so every seed is scored on the same test set and runs pair up for significance tests, and so does
the training batch order (``data.order_seed``, default ``data.seed``): a run without random init or dropout (full
fine-tuning of a model without a new head, dropout 0) is the same run under every seed. ``--vary_order``
varies the data order too (``data.order_seed`` = the training seed; the split stays); off by default, so that
every committed study reproduces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Sequence

from jsonargparse.typing import NonNegativeInt

from finlight.commands import run_command
from finlight.prune.checkpoint_selection import HOWS, layer_count, select_from_fit
from finlight.errors import FinlightError


def seeds_command(config: list[str], seeds: list[NonNegativeInt], experiment: Optional[str] = None,
                  report_dir: Optional[str] = None, select: Literal[HOWS] = "best",
                  vary_order: bool = False, overrides: Sequence[str] = ()) -> list[str]:
    """Fit and test one config once per seed, then report mean ± std. Other options (--trainer.max_epochs 3,
    --model.init_args.learning_rate 1e-4 …) go to every fit; this command's own settings file is --settings.

    Args:
        config: config file(s), as for fit (repeat --config for several).
        seeds: the training seeds (seed_everything), one fit each.
        experiment: run name under logs/ (default: the config's name).
        report_dir: default: reports/<experiment>_seeds.
        select: checkpoint to test: best (validation), last (end of the fit), final_depth (best validation at
            the architecture the run ended with: layer-dropping runs).
        vary_order: also seed the training batch order by the seed (data.order_seed = seed; the split keeps
            data.seed): for runs whose only randomness is the data order (full fine-tuning, dropout 0).
    """
    overrides = list(overrides)
    if any(o in ("--seed_everything", "--experiment") or o.startswith("--seed_everything=") for o in overrides):
        raise FinlightError("seeds: set the seeds with --seeds, not --seed_everything")
    if vary_order and any(o.split("=")[0].endswith(".order_seed") for o in overrides):
        raise FinlightError("seeds: --vary_order sets data.order_seed per seed; drop --data.init_args.order_seed")
    for path in config:
        if not Path(path).is_file():
            raise FinlightError(f"--config {path}: no such file")
    name = experiment or Path(config[-1]).stem
    configs = [a for path in config for a in ("--config", path)]

    from finlight.cli import run_cli

    run_dirs = []
    for i, seed in enumerate(seeds, 1):
        print(f"finlight seeds: seed {seed} ({i}/{len(seeds)}) — fit, then test of the {select} checkpoint")
        order = ["--data.init_args.order_seed", str(seed)] if vary_order else []
        cli = run_cli(["fit", *configs, "--seed_everything", str(seed), "--experiment", name, *overrides, *order])
        trainer = cli.trainer
        callback = trainer.checkpoint_callback
        if callback is None or not (callback.best_model_path or callback.last_model_path):
            raise FinlightError(f"seeds: the fit with seed {seed} saved no checkpoint (checkpointing off, or "
                                f"no validation?); cannot test it")
        selected = select_from_fit(callback, _final_config(cli.model) if select == "final_depth" else None,
                                   select)
        value = "unranked" if selected.value is None else f"{selected.value:.4f}"
        print(f"finlight seeds: seed {seed}: testing {selected.path} ({select}: {layer_count(selected.layers)}, "
              f"{selected.monitor} {value})")
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=selected.path)
        if trainer.is_global_zero:
            record_selection(trainer.log_dir, selected.record())
        run_dirs.append(trainer.log_dir)

    from finlight.report.compare import build_report

    report_dir = report_dir or str(Path("reports") / f"{name}_seeds")
    result = build_report(run_dirs, report_dir)
    group = result["groups"][0]
    summary = ", ".join(f"{m.split('/')[-1]} {group[f'{m}_mean']:.4f}"
                        + (f" ± {group[f'{m}_std']:.4f}" if group[f"{m}_std"] is not None else "")
                        for m in ("test/acc", "test/macro_f1"))
    print(f"finlight seeds: {name}, seeds {seeds}: {summary} (runs: {', '.join(run_dirs)}) → {report_dir}/report.md")
    return run_dirs


def seeds_main(argv: list[str]) -> list[str]:
    return run_command(seeds_command, argv, "seeds", config_option="--settings", passthrough=True)


def _final_config(module) -> dict:
    """The backbone config the fit ended with (what finlight checkpoints record as the architecture)."""
    config = getattr(getattr(module, "model", None), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise FinlightError(f"--select final_depth: {type(module).__name__} has no Hugging Face backbone "
                            f"(module.model.config) to read the final depth from; use --select best or last")
    return config.to_dict()


def record_selection(run_dir: str, selected: dict) -> None:
    """Add which checkpoint was tested, and why, to the run's ``test_metrics.json`` (written by the test)."""
    path = Path(run_dir) / "test_metrics.json"
    if not path.is_file():
        raise FinlightError(f"{path}: the test wrote no metrics (report callback off?); cannot record the selection")
    report = json.loads(path.read_text())
    report["selected"] = selected
    path.write_text(json.dumps(report, indent=2))
