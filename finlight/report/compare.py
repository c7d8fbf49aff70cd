"""``python -m finlight report logs/A logs/B --baseline A``: compare finished runs, honestly.

Reads every tested run (a folder with ``test_metrics.json``) under the given paths and writes to
``--output_dir``:

* ``report.md``: the tables below as Markdown sections (Groups, Runs, Paired tests when there are two or more
  groups, Notes), also printed;
* ``runs.csv``: one row per run — seed, which checkpoint was tested (``selected``: ``seeds --select`` records it,
  e.g. ``final_depth (2 layers)``; "—" for runs tested without it), test metrics, best validation macro-F1,
  parameters, size, latency (from ``latency.json`` when the run has one) and the paired tests against the
  baseline run of the same seed;
* ``groups.csv``: runs grouped by experiment (the one the test was logged under), mean ± std (sample std, ddof=1) over seeds, Δ vs the baseline;
* ``paired.csv`` (only when there are pairs): for each run and its baseline evaluated on the same test set,
  McNemar's test on per-example correctness and a paired bootstrap of the macro-F1 difference (95 % CI, p-value);
* ``val_curves.png``: per-epoch validation curves of every run, overlaid (TensorBoard events);
* ``confusion.csv`` and a report section: each group's test confusion matrix, summed over its runs and
  row-normalised (share of each true class predicted as each class), when the runs recorded one;
* with ``--teacher <run folder>`` (distillation): ``kl_teacher`` per run = mean over test examples of
  KL(teacher ‖ run) from the two ``test_predictions.csv`` files (T = 1; probabilities as written there, to 6
  decimals, clipped at 1e-6), so the teacher's test logits are computed once, by its own ``test``.

A run with a ``threshold_sweep.json`` (`finlight.core.callbacks.ThresholdSweep`) also offers its operating-point
figures as metrics for ``--metrics``: ``val/threshold`` (chosen on validation), ``test/precision_at_threshold``,
``test/recall_at_threshold``, ``test/f1_at_threshold`` (test at that threshold), ``test/average_precision`` and
``test/auroc`` (threshold-free), and ``pr_curves.png`` overlays those runs' test PR curves. The paired tests always
compare the argmax predictions of ``test_predictions.csv``.

A ``test`` run in a new process writes its own log folder; its checkpoint path leads back to the ``fit``
folder (``checkpoints/<exp>/version_N`` ↔ ``logs/<exp>/version_N``), whose config gives the seed and whose
events give the curves.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveInt

from finlight.commands import run_command
from finlight.prune.checkpoint_selection import describe_selection
from finlight.errors import FinlightError

log = logging.getLogger("finlight.report.compare")
CURVE_TAGS = ("val/acc", "val/macro_f1", "val/loss")  # val_curves.png: one panel each, runs overlaid
DEFAULT_METRICS = ("test/acc", "test/macro_f1", "test/weighted_f1", "test/loss")
# keys that may differ between runs of one configuration (init_from: a stage-2 run starts from its own seed's
# stage-1 checkpoint; order_seed: the batch order's seed, varied per training seed by `seeds --vary_order`)
VOLATILE_KEYS = ("seed_everything", "ckpt_path", "config", "experiment", "trainer.logger", "model.init_args.init_from",
                 "data.init_args.order_seed")


# ---------------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if len(v) == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def mcnemar_test(labels: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> dict:
    """McNemar's test on per-example correctness of two classifiers (statsmodels).

    Exact binomial test when the discordant pairs ``b + c`` < 25, else chi² with continuity correction.
    ``b``: A right and B wrong; ``c``: A wrong and B right.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    y, a, b_ = (np.asarray(x) for x in (labels, pred_a, pred_b))
    if not len(y) == len(a) == len(b_):
        raise FinlightError(f"McNemar: {len(y)} labels but {len(a)} and {len(b_)} predictions")
    right_a, right_b = a == y, b_ == y
    table = [[int(np.sum(right_a & right_b)), int(np.sum(right_a & ~right_b))],
             [int(np.sum(~right_a & right_b)), int(np.sum(~right_a & ~right_b))]]
    discordant = table[0][1] + table[1][0]
    exact = discordant < 25
    if discordant == 0:  # identical correctness: no evidence of a difference
        return {"b": 0, "c": 0, "statistic": 0.0, "pvalue": 1.0, "exact": True}
    result = mcnemar(table, exact=exact, correction=True)
    return {"b": table[0][1], "c": table[1][0], "statistic": float(result.statistic),
            "pvalue": float(result.pvalue), "exact": exact}


def _macro_f1_counts(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of ``[r, n]`` label / prediction arrays, averaged over the classes that occur in
    the row's labels or predictions (as sklearn's ``f1_score(average="macro")`` and torchmetrics)."""
    r = labels.shape[0]
    codes = (np.arange(r)[:, None] * k * k + labels * k + predicted).ravel()
    confusion = np.bincount(codes, minlength=r * k * k).reshape(r, k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    support = confusion.sum(axis=2)          # true counts per class
    claimed = confusion.sum(axis=1)          # predicted counts per class
    denominator = support + claimed          # 2tp + fp + fn
    present = denominator > 0
    f1 = np.where(present, 2 * tp / np.where(present, denominator, 1), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def macro_f1(labels: Sequence[int], predicted: Sequence[int], k: int) -> float:
    return float(_macro_f1_counts(np.asarray(labels)[None], np.asarray(predicted)[None], k)[0])


def paired_bootstrap(labels: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], k: int,
                     n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Paired bootstrap of Δ = macro-F1(B) − macro-F1(A): both models are scored on the same resampled test
    examples. 95 % percentile interval, and the matching two-sided percentile p-value (Koehn 2004's "B beats A
    in x % of resamples", made two-sided): p = min(1, 2 · (1 + #{Δ* on the far side of 0}) / (R + 1)), where the
    far side is Δ* ≤ 0 when Δ ≥ 0 and Δ* ≥ 0 otherwise; so p < 0.05 exactly when the 95 % interval excludes 0
    (up to the +1 that keeps p above zero).

    Written here because macro-F1 is not a mean over examples (scipy's ``bootstrap`` would need a vectorised
    statistic anyway) and sklearn's f1_score on 10,000 resamples takes ~10 s; counting confusion matrices of a
    chunk of resamples with one ``bincount`` takes well under a second.
    """
    y, a, b = (np.asarray(x, dtype=np.int64) for x in (labels, pred_a, pred_b))
    n = len(y)
    if n == 0 or not len(a) == len(b) == n:
        raise FinlightError(f"paired bootstrap: {n} labels, {len(a)} and {len(b)} predictions")
    observed = macro_f1(y, b, k) - macro_f1(y, a, k)
    rng = np.random.default_rng(seed)
    deltas = []
    chunk = max(1, min(n_resamples, 2_000_000 // max(n, 1)))
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        deltas.append(_macro_f1_counts(y[idx], b[idx], k) - _macro_f1_counts(y[idx], a[idx], k))
    deltas = np.concatenate(deltas)
    far_side = int(np.sum(deltas <= 0)) if observed >= 0 else int(np.sum(deltas >= 0))
    return {"delta": float(observed), "ci_low": float(np.percentile(deltas, 2.5)),
            "ci_high": float(np.percentile(deltas, 97.5)),
            "pvalue": min(1.0, 2 * (1 + far_side) / (n_resamples + 1)),
            "resamples": n_resamples}


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: str
    fit_path: str
    group: str
    seed: Optional[int]
    label_names: list[str]
    metrics: dict[str, float]
    config: dict = field(default_factory=dict)
    latency: Optional[dict] = None
    checkpoint: Optional[str] = None
    selected: Optional[dict] = None  # which checkpoint was tested and why (``seeds --select``); older runs: None
    confusion: Optional[list] = None  # test confusion matrix (true × predicted counts), when recorded
    sweep: Optional[dict] = None  # threshold_sweep.json (ThresholdSweep), when the run has one

    @property
    def predictions_path(self) -> Optional[str]:
        path = os.path.join(self.path, "test_predictions.csv")
        return path if os.path.isfile(path) else None


def _load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as handle:
            return yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise FinlightError(f"{path}: unreadable config ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _fit_folder(run_dir: Path, checkpoint: Optional[str]) -> Path:
    """The log folder of the fit that wrote ``checkpoint`` (``checkpoints/<exp>/<version>/x.ckpt`` →
    ``<logs root>/<exp>/<version>``), or the run folder itself."""
    if checkpoint:
        parts = Path(checkpoint).parts
        if len(parts) >= 3:
            candidate = run_dir.parent.parent / parts[-3] / parts[-2]
            if candidate.is_dir() and any(f.startswith("events.out.tfevents") for f in os.listdir(candidate)):
                return candidate
    return run_dir


def sweep_metrics(sweep: dict) -> dict[str, float]:
    """The metrics a ``threshold_sweep.json`` adds to its run (see the module docstring)."""
    at, curve = sweep["test"]["at_threshold"], sweep["test"]["pr_curve"]
    out = {"val/threshold": sweep["threshold"], "test/precision_at_threshold": at["precision"],
           "test/recall_at_threshold": at["recall"], "test/f1_at_threshold": at["f1"],
           "test/average_precision": curve["average_precision"]}
    if curve.get("roc_auc") is not None:
        out["test/auroc"] = curve["roc_auc"]
    return {k: float(v) for k, v in out.items()}


def read_run(folder: str) -> Run:
    run_dir = Path(folder)
    metrics_file = run_dir / "test_metrics.json"
    try:
        with open(metrics_file) as handle:
            report = json.load(handle)
        metrics = {k: float(v) for k, v in report["metrics"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FinlightError(f"{metrics_file}: not a finlight test report ({type(err).__name__}: {err})") from None
    fit_dir = _fit_folder(run_dir, report.get("checkpoint"))
    config_file = fit_dir / "config.yaml" if (fit_dir / "config.yaml").is_file() else run_dir / "config.yaml"
    config = _load_yaml(str(config_file)) if config_file.is_file() else {}
    latency = None
    if (run_dir / "latency.json").is_file():
        with open(run_dir / "latency.json") as handle:
            latency = json.load(handle)
    sweep_file, sweep = run_dir / "threshold_sweep.json", None
    if sweep_file.is_file():
        try:
            with open(sweep_file) as handle:
                sweep = json.load(handle)
            for key, value in sweep_metrics(sweep).items():
                    metrics.setdefault(key, value)  # the test's own logged metrics come first
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FinlightError(f"{sweep_file}: not a finlight threshold sweep ({type(err).__name__}: {err})") from None
    seed = config.get("seed_everything")
    # the group is the experiment the test was logged under: a retest under the fit's name joins its row, a test of
    # another checkpoint of the same fit under a new name (e.g. the same run at an intermediate depth) is a row
    return Run(path=str(run_dir), fit_path=str(fit_dir), group=run_dir.parent.name, seed=seed if isinstance(seed, int) else None,
               label_names=list(report.get("label_names") or []), metrics=metrics, config=config, latency=latency,
               checkpoint=report.get("checkpoint"), selected=report.get("selected"),
               confusion=report.get("confusion_matrix"), sweep=sweep)


def discover_runs(paths: Sequence[str]) -> list[Run]:
    """Every folder holding a ``test_metrics.json`` at or under ``paths`` (a run folder, an experiment's
    folder, or a whole ``logs/``), in a stable order."""
    folders = []
    for p in paths:
        if not os.path.exists(p):
            raise FinlightError(f"{p}: no such run folder")
        if os.path.isfile(os.path.join(p, "test_metrics.json")):
            folders.append(p)
        else:
            folders += sorted(str(f.parent) for f in Path(p).rglob("test_metrics.json"))
    if not folders:
        raise FinlightError(f"no tested runs (test_metrics.json) under {list(paths)}: run "
                            f"`python -m finlight test --config X --ckpt_path best` first")
    unique = list(dict.fromkeys(os.path.normpath(f) for f in folders))
    return [read_run(f) for f in sorted(unique, key=_natural_key)]


def _natural_key(path: str):
    """``version_10`` after ``version_9``."""
    return [[(0, int(c), "") if c.isdigit() else (1, 0, c) for c in re.split(r"(\d+)", part) if c]
            for part in Path(path).parts]


def merge_retests(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """Several ``test`` runs of one checkpoint are one trained model, not several seeds: keep the newest test
    (the last folder in natural order), taking latency figures and the record of how the checkpoint was chosen
    (``selected``, written by ``seeds``) from an older one when the newest has none."""
    by_checkpoint: dict[str, list[Run]] = {}
    for r in runs:
        key = os.path.normpath(r.checkpoint) if r.checkpoint else r.path
        by_checkpoint.setdefault(key, []).append(r)
    kept, notes = [], []
    for key, same in by_checkpoint.items():
        newest = same[-1]
        if len(same) > 1:
            newest.latency = newest.latency or next((r.latency for r in reversed(same) if r.latency), None)
            newest.selected = newest.selected or next((r.selected for r in reversed(same) if r.selected), None)
            notes.append(f"{len(same)} tests of {key} ({', '.join(r.path for r in same)}) count once: {newest.path}")
        kept.append(newest)
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), notes


def config_differences(runs: Sequence[Run]) -> list[str]:
    """Configuration keys (seed and logger aside) on which the runs of one group disagree."""
    flats = [{k: v for k, v in flatten(r.config).items() if not k.startswith(VOLATILE_KEYS)} for r in runs]
    keys = set().union(*flats) if flats else set()
    return sorted(k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1)


def read_curves(folder: str, tags: Sequence[str] = CURVE_TAGS) -> dict[str, list[tuple[int, float]]]:
    """``tag → [(epoch, value)]`` from a run's TensorBoard events (epoch from Lightning's ``epoch`` scalar)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(f.startswith("events.out.tfevents") for f in os.listdir(folder)):
        return {}
    events = EventAccumulator(folder, size_guidance={"scalars": 0})
    events.Reload()
    available = set(events.Tags().get("scalars", []))
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in available else {}
    curves = {}
    for tag in tags:
        if tag in available:
            points = [(epoch_at.get(e.step, i), float(e.value)) for i, e in enumerate(events.Scalars(tag))]
            curves[tag] = points
    return curves


# ---------------------------------------------------------------------------------------------- tables
def _latency_columns(run: Run) -> dict:
    lat = run.latency or {}
    batches = lat.get("batches", {})
    largest = max(batches, key=int) if batches else None
    return {"parameters": lat.get("parameters"), "disk_size_mb": lat.get("disk_size_mb"),
            "latency_ms_bs1": batches.get("1", {}).get("ms_mean"),
            "samples_per_s": batches[largest]["samples_per_s"] if largest else None,
            "throughput_batch": int(largest) if largest else None}


def paired_tests(runs: Sequence[Run], baseline: str, resamples: int = 10_000, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Each non-baseline run against the baseline run of the same seed (else the baseline's first run), on
    their per-example test predictions. Returns rows and notes on pairs that could not be tested."""
    from finlight.core.callbacks.collect import read_split_predictions

    base_runs = [r for r in runs if r.group == baseline]
    if not base_runs:
        raise FinlightError(f"--baseline {baseline!r} is not among the groups {sorted({r.group for r in runs})}")
    rows, notes = [], []
    for run in runs:
        if run.group == baseline:
            continue
        partner = next((b for b in base_runs if b.seed is not None and b.seed == run.seed), base_runs[0])
        if partner.predictions_path is None or run.predictions_path is None:
            missing = partner if partner.predictions_path is None else run
            notes.append(f"{run.path} vs {partner.path}: no test_predictions.csv in {missing.path} (tested before "
                         f"finlight wrote per-example predictions? run test again)")
            continue
        a, names_a, texts_a = read_split_predictions(partner.predictions_path)
        b, names_b, texts_b = read_split_predictions(run.predictions_path)
        same = (names_a == names_b and a.labels is not None and b.labels is not None
                and np.array_equal(a.index, b.index) and np.array_equal(a.labels, b.labels)
                and (texts_a is None or texts_b is None or texts_a == texts_b))
        if not same:
            notes.append(f"{run.path} vs {partner.path}: evaluated on different test sets (labels, texts or label "
                         f"names differ); no paired test")
            continue
        k = len(names_a)
        mc = mcnemar_test(a.labels, a.predicted, b.predicted)
        boot = paired_bootstrap(a.labels, a.predicted, b.predicted, k, resamples, seed)
        rows.append({"baseline_run": partner.path, "run": run.path, "group": run.group, "seed": run.seed,
                     "seed_matched": partner.seed == run.seed and run.seed is not None, "n": len(a.labels),
                     "acc_baseline": float(np.mean(a.predicted == a.labels)), "acc_run": float(np.mean(b.predicted == b.labels)),
                     "macro_f1_baseline": macro_f1(a.labels, a.predicted, k), "macro_f1_run": macro_f1(b.labels, b.predicted, k),
                     "delta_macro_f1": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
                     "bootstrap_p": boot["pvalue"], "mcnemar_b": mc["b"], "mcnemar_c": mc["c"],
                     "mcnemar_p": mc["pvalue"], "mcnemar_exact": mc["exact"]})
    return rows, notes


def teacher_kl(runs: Sequence[Run], teacher: str, floor: float = 1e-6) -> tuple[dict[str, float], list[str]]:
    """``run path → mean_i KL(p_teacher,i ‖ p_run,i)`` on the test split, from the runs' ``test_predictions.csv``
    (teacher probabilities and the run's clipped at ``floor`` and renormalised); notes on runs left out."""
    from finlight.core.callbacks.collect import read_split_predictions

    path = os.path.join(teacher, "test_predictions.csv")
    if not os.path.isfile(path):
        raise FinlightError(f"--teacher {teacher}: no test_predictions.csv there; give the teacher's tested run "
                            f"folder (python -m finlight test … --ckpt_path <teacher>)")
    t, names_t, texts_t = read_split_predictions(path)
    order_t = np.argsort(t.index)
    p_t = np.clip(t.probs[order_t], floor, None)
    p_t /= p_t.sum(axis=1, keepdims=True)
    out, notes = {}, []
    for run in runs:
        if run.predictions_path is None:
            notes.append(f"{run.path}: no test_predictions.csv; no kl_teacher")
            continue
        r, names_r, texts_r = read_split_predictions(run.predictions_path)
        order_r = np.argsort(r.index)
        same = (names_r == names_t and np.array_equal(t.index[order_t], r.index[order_r])
                and (texts_t is None or texts_r is None
                     or [texts_t[i] for i in order_t] == [texts_r[i] for i in order_r]))
        if not same:
            notes.append(f"{run.path}: tested on another test set (or labels) than the teacher {teacher}; no kl_teacher")
            continue
        p_r = np.clip(r.probs[order_r], floor, None)
        p_r /= p_r.sum(axis=1, keepdims=True)
        out[run.path] = float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_r)), axis=1)))
    return out, notes


def confusion_rows(runs: Sequence[Run]) -> list[dict]:
    """Per group: the test confusion matrices of its runs summed, each true-class row divided by its total."""
    out = []
    for group in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == group and r.confusion]
        if not members or len({len(r.confusion) for r in members}) != 1:
            continue
        names = members[0].label_names or [str(i) for i in range(len(members[0].confusion))]
        total = np.sum([np.asarray(r.confusion, float) for r in members], axis=0)
        shares = total / np.maximum(total.sum(axis=1, keepdims=True), 1)
        for i, true in enumerate(names):
            out.append({"group": group, "runs": len(members), "true": true, "n": int(total[i].sum()),
                        **{f"pred_{n}": float(shares[i, j]) for j, n in enumerate(names)}})
    return out


def run_rows(runs: Sequence[Run], metrics: Sequence[str], curves: dict[str, dict], pairs: list[dict],
             kl: Optional[dict[str, float]] = None) -> list[dict]:
    by_run = {p["run"]: p for p in pairs}
    rows = []
    for r in runs:
        val = [v for _, v in curves.get(r.path, {}).get("val/macro_f1", [])]
        pair = by_run.get(r.path, {})
        rows.append({"group": r.group, "run": r.path, "seed": r.seed, "selected": describe_selection(r.selected),
                     "selected_by": _selected_by(r.selected), **{m: r.metrics.get(m) for m in metrics},
                     "best_val_macro_f1": max(val) if val else None, **_latency_columns(r),
                     "mcnemar_p": pair.get("mcnemar_p"), "bootstrap_p": pair.get("bootstrap_p"),
                     **({"kl_teacher": kl.get(r.path)} if kl is not None else {})})
    return rows


def _selected_by(selected: Optional[dict]) -> Optional[str]:
    """The validation value that chose the tested checkpoint (``val/macro_f1 0.8123``), when recorded."""
    if not selected or selected.get("value") is None:
        return None
    return f"{selected.get('monitor')} {float(selected['value']):.4f}"


def group_rows(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """Mean ± std over the runs of each group, for each metric column."""
    columns = list(metrics) + ["best_val_macro_f1", "latency_ms_bs1", "samples_per_s", "parameters", "disk_size_mb"]
    if any("kl_teacher" in r for r in rows):
        columns.append("kl_teacher")
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        row = {"group": group, "runs": len(members), "seeds": " ".join(str(r["seed"]) for r in members),
               "selected": " / ".join(sorted({r["selected"] for r in members if r.get("selected")})) or None}
        for c in columns:
            mean, std = mean_std([r[c] for r in members if r.get(c) is not None])
            row[f"{c}_mean"], row[f"{c}_std"] = mean, std
        out.append(row)
    return out


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_csv(path: str, rows: Sequence[dict]) -> None:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def curves_figure(runs: Sequence[Run], curves: dict[str, dict]):
    from finlight.core.plots import plt

    tags = [t for t in CURVE_TAGS if any(t in curves.get(r.path, {}) for r in runs)]
    fig, axes = plt.subplots(1, max(len(tags), 1), figsize=(6 * max(len(tags), 1), 4), squeeze=False)
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(dict.fromkeys(r.group for r in runs))}
    for ax, tag in zip(axes[0], tags):
        seen = set()
        for r in runs:
            points = curves.get(r.path, {}).get(tag)
            if not points:
                continue
            label = r.group if r.group not in seen else None
            seen.add(r.group)
            ax.plot([e + 1 for e, _ in points], [v for _, v in points], marker="o", markersize=3,
                    color=colours[r.group], alpha=0.8, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_title(tag)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pr_figure(runs: Sequence[Run]):
    """Test precision–recall curves of every run with a threshold sweep, coloured by group, with each run's
    operating point (the threshold chosen on validation) marked; None when no run has a sweep."""
    swept = [r for r in runs if r.sweep is not None]
    if not swept:
        return None
    from finlight.core.plots import plt

    fig, ax = plt.subplots(figsize=(6, 5))
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(dict.fromkeys(r.group for r in swept))}
    seen = set()
    for r in swept:
        curve, at = r.sweep["test"]["pr_curve"], r.sweep["test"]["at_threshold"]
        label = None
        if r.group not in seen:
            aps = [x.sweep["test"]["pr_curve"]["average_precision"] for x in swept if x.group == r.group]
            label = f"{r.group} (AP {np.mean(aps):.3f}, {len(aps)} runs)"
        seen.add(r.group)
        ax.plot(curve["recall"], curve["precision"], color=colours[r.group], alpha=0.7, label=label)
        ax.plot([at["recall"]], [at["precision"]], "o", color=colours[r.group])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"test PR curves ({swept[0].sweep['positive_label']}); ● threshold chosen on val")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def build_report(paths: Sequence[str], output_dir: str, baseline: Optional[str] = None,
                 metrics: Sequence[str] = DEFAULT_METRICS, resamples: int = 10_000, seed: int = 0,
                 teacher: Optional[str] = None) -> dict:
    """Everything ``report`` writes; returns the tables (tests read them). ``teacher``: a tested run folder
    whose test predictions give each run's ``kl_teacher``."""
    runs, notes = merge_retests(discover_runs(paths))
    groups = list(dict.fromkeys(r.group for r in runs))
    baseline = baseline or groups[0]
    if baseline not in groups:
        raise FinlightError(f"--baseline {baseline!r} is not among the groups {groups}")
    runs = [r for r in runs if r.group == baseline] + [r for r in runs if r.group != baseline]  # baseline first
    for group in groups:
        diffs = config_differences([r for r in runs if r.group == group])
        if diffs:
            notes.append(f"group {group!r} mixes configurations (differing keys: {', '.join(diffs[:8])}"
                         f"{' …' if len(diffs) > 8 else ''}): its mean ± std is not over seeds alone")
        selections = {describe_selection(r.selected) or "not recorded" for r in runs if r.group == group}
        if len(selections) > 1:
            notes.append(f"group {group!r} mixes checkpoint selections ({', '.join(sorted(selections))}): its runs "
                         f"test different kinds of checkpoint")
    pairs, pair_notes = paired_tests(runs, baseline, resamples, seed) if len(groups) > 1 else ([], [])
    notes += pair_notes
    curves = {}
    for r in runs:
        curves[r.path] = read_curves(r.fit_path)
    kl = None
    if teacher:
        kl, kl_notes = teacher_kl(runs, teacher)
        notes += kl_notes
    rows = run_rows(runs, metrics, curves, pairs, kl)
    grouped = group_rows(rows, metrics)
    confusion = confusion_rows(runs)
    base = next(g for g in grouped if g["group"] == baseline)
    for g in grouped:
        for m in metrics:
            g[f"{m}_delta_vs_baseline"] = g[f"{m}_mean"] - base[f"{m}_mean"]

    os.makedirs(output_dir, exist_ok=True)
    _write_csv(os.path.join(output_dir, "runs.csv"), rows)
    _write_csv(os.path.join(output_dir, "groups.csv"), grouped)
    if pairs:
        _write_csv(os.path.join(output_dir, "paired.csv"), pairs)
    if confusion:
        _write_csv(os.path.join(output_dir, "confusion.csv"), confusion)
    text = _markdown(rows, grouped, pairs, notes, metrics, baseline, confusion, teacher)
    with open(os.path.join(output_dir, "report.md"), "w") as handle:
        handle.write(text)
    figure = curves_figure(runs, curves)
    figure.savefig(os.path.join(output_dir, "val_curves.png"), dpi=110)
    from finlight.core.plots import plt

    plt.close(figure)
    pr = pr_figure(runs)
    if pr is not None:
        pr.savefig(os.path.join(output_dir, "pr_curves.png"), dpi=110)
        plt.close(pr)
    return {"runs": rows, "groups": grouped, "pairs": pairs, "notes": notes, "baseline": baseline, "markdown": text,
            "confusion": confusion}


# optional group columns, shown when some group has a value: (column, header, digits)
_EXTRA_GROUP_COLUMNS = (("kl_teacher", "KL(teacher‖run)", 4), ("parameters", "params (M)", 2),
                        ("disk_size_mb", "MB", 1), ("samples_per_s", "docs/s", 0))


def _markdown(rows, grouped, pairs, notes, metrics, baseline, confusion=(), teacher=None) -> str:
    short = [m.split("/")[-1] for m in metrics]
    group_view = []
    for g in grouped:
        view = {"group": g["group"] + (" (baseline)" if g["group"] == baseline else ""), "runs": g["runs"],
                "seeds": g["seeds"], "selected": g["selected"]}
        for m, s in zip(list(metrics) + ["best_val_macro_f1", "latency_ms_bs1"], short + ["best val macro_f1", "ms @bs1"]):
            mean, std = g[f"{m}_mean"], g[f"{m}_std"]
            view[s] = "—" if math.isnan(mean) else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        for column, header, digits in _EXTRA_GROUP_COLUMNS:
            if any(not math.isnan(x.get(f"{column}_mean", float("nan"))) for x in grouped):
                mean = g.get(f"{column}_mean", float("nan"))
                scale = 1e6 if column == "parameters" else 1
                view[header] = "—" if math.isnan(mean) else f"{mean / scale:.{digits}f}"
        if "test/macro_f1" in metrics:
            view["Δ macro_f1"] = f"{g['test/macro_f1_delta_vs_baseline']:+.4f}"
        group_view.append(view)
    run_view = [{**r, **{s: r[m] for m, s in zip(metrics, short)}} for r in rows]
    out = ["# finlight report", "",
           f"Baseline: **{baseline}**. Mean ± sample std (ddof=1) over the runs of each group.", "",
           "## Groups", "", markdown_table(group_view, list(group_view[0])),
           "## Runs", "", markdown_table(run_view, ["group", "run", "seed", "selected", "selected_by"] + short + [
               "best_val_macro_f1", "parameters", "disk_size_mb", "latency_ms_bs1", "samples_per_s",
               "mcnemar_p", "bootstrap_p"] + (["kl_teacher"] if any("kl_teacher" in r for r in rows) else []))]
    if pairs:
        out += ["## Paired tests against the baseline (same test set)", "",
                "McNemar on per-example correctness (b: baseline right / run wrong, c: the reverse; exact binomial "
                "when b + c < 25); paired bootstrap of Δ macro-F1 = run − baseline with 95 % percentile CI.", "",
                markdown_table(pairs, ["run", "baseline_run", "seed", "seed_matched", "n", "macro_f1_baseline",
                                       "macro_f1_run", "delta_macro_f1", "ci_low", "ci_high", "bootstrap_p",
                                       "mcnemar_b", "mcnemar_c", "mcnemar_p"])]
        for g in dict.fromkeys(p["group"] for p in pairs):
            ps = [p for p in pairs if p["group"] == g]
            significant = sum(p["bootstrap_p"] < 0.05 and p["mcnemar_p"] < 0.05 for p in ps)
            out.append(f"- **{g}** vs **{baseline}**: {significant} of {len(ps)} paired comparisons significant at "
                       f"0.05 by both tests; Δ macro-F1 per pair: "
                       + ", ".join(f"{p['delta_macro_f1']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" for p in ps))
        out.append("")
    if confusion:
        preds = [c for c in confusion[0] if c.startswith("pred_")]
        out += ["## Confusion matrices (test, summed over each group's runs, row-normalised)", "",
                "Each row: the share of that true class predicted as each class.", "",
                markdown_table([{**c, **{p: f"{c[p]:.3f}" for p in preds}} for c in confusion],
                               ["group", "runs", "true", "n"] + preds)]
    if teacher:
        out += [f"KL(teacher‖run): mean over the test examples of KL(p_teacher ‖ p_run), T = 1, teacher = "
                f"`{teacher}` (its test_predictions.csv).", ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def report_command(paths: list[str], output_dir: str = "reports", baseline: Optional[str] = None,
                   metrics: list[str] = list(DEFAULT_METRICS), resamples: PositiveInt = 10_000,
                   seed: NonNegativeInt = 0, teacher: Optional[str] = None) -> dict:
    """Compare finished runs: tables, curves, mean ± std over seeds, paired significance tests.

    Args:
        paths: run folders, experiment folders (logs/X) or a whole logs/ folder.
        output_dir: where the tables and plots go.
        baseline: group (experiment name) the others are tested against (default: the first found).
        metrics: metrics in the tables.
        resamples: paired bootstrap resamples (at least 100; 10,000 for p-values you report).
        seed: bootstrap seed.
        teacher: a teacher's tested run folder: adds kl_teacher, KL(teacher ‖ run) on the test split.
    """
    if resamples < 100:
        raise FinlightError(f"--resamples {resamples}: use at least 100 (10,000 for p-values you report)")
    result = build_report(paths, output_dir, baseline, metrics, resamples, seed, teacher)
    print(result["markdown"])
    print(f"finlight: report of {len(result['runs'])} runs in {len(result['groups'])} groups → {output_dir}/report.md")
    return result


def report_main(argv: list[str]) -> dict:
    return run_command(report_command, argv, "report", positional=("paths",))
