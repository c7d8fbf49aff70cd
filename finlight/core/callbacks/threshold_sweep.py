"""Threshold sweep for binary (or one-vs-rest) decisions, chosen on validation and applied to test; and a
multi-tier decision policy (e.g. remove / review / allow) for ``predict`` output.

The sweep counts true/false positives at each grid threshold with numpy (one pass per threshold; the grid
is small), and takes the exact precision–recall curve from sklearn. The threshold is selected on the
validation split only (best F1, or the best recall at a target precision, or the best precision at a target
recall); test is then scored once at that threshold.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from finlight.core.callbacks.collect import ForwardCapture, SplitPredictions, predict_split
from finlight.errors import FinlightError
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.callbacks")
Selection = Literal["f1", "precision", "recall"]


def default_grid() -> list[float]:
    """0.05, 0.10, …, 0.95."""
    return [round(0.05 * i, 2) for i in range(1, 20)]


def sweep(labels: Sequence[int], scores: Sequence[float], thresholds: Sequence[float]) -> list[dict]:
    """Precision, recall, F1 and accuracy of "positive iff score >= t" at each threshold (0 where undefined,
    as sklearn's ``zero_division=0``)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    rows = []
    for t in thresholds:
        predicted = s >= t
        tp = int(np.sum(predicted & y))
        fp = int(np.sum(predicted & ~y))
        fn = int(np.sum(~predicted & y))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        rows.append({"threshold": float(t), "precision": precision, "recall": recall, "f1": f1,
                     "accuracy": float(np.mean(predicted == y)) if len(y) else 0.0,
                     "predicted_positive": int(predicted.sum()), "tp": tp, "fp": fp, "fn": fn})
    return rows


def choose_threshold(rows: list[dict], select: Selection = "f1", target: Optional[float] = None) -> tuple[dict, bool]:
    """The sweep row to operate at, and whether the target was met.

    ``f1``: highest F1 (ties: the lowest threshold). ``precision``: among thresholds whose precision reaches
    ``target``, the highest recall (ties: higher precision). ``recall``: among thresholds whose recall reaches
    ``target``, the highest precision (ties: higher recall). A target no threshold meets falls back to best F1.
    """
    if not rows:
        raise FinlightError("threshold sweep: empty threshold grid")
    best_f1 = max(rows, key=lambda r: (r["f1"], -r["threshold"]))
    if select == "f1":
        return best_f1, True
    if target is None or not 0.0 < target <= 1.0:
        raise FinlightError(f"threshold sweep: select={select} needs a target in (0, 1], got {target}")
    other = "recall" if select == "precision" else "precision"
    meeting = [r for r in rows if r[select] >= target and r["predicted_positive"] > 0]
    if not meeting:
        return best_f1, False
    return max(meeting, key=lambda r: (r[other], r[select])), True


def pr_curve(labels: Sequence[int], scores: Sequence[float]) -> dict:
    """The exact precision–recall curve (sklearn), average precision, and the ROC AUC (threshold-free: the
    chance that a random positive scores above a random negative; it needs both classes)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    both = 0 < int(np.sum(labels)) < len(labels)
    return {"average_precision": float(average_precision_score(labels, scores)),
            "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
            "precision": precision.round(6).tolist(), "recall": recall.round(6).tolist(),
            "thresholds": thresholds.round(6).tolist()}


# ---------------------------------------------------------------------------------------------- decisions
@dataclass
class Tier:
    """One band of the decision policy: texts whose positive-class probability is >= ``min_score``."""

    name: str
    min_score: float


@dataclass
class DecisionPolicy:
    """Ordered bands, highest first; the last must start at 0 so every text gets one. Example (toxicity)::

        tiers: [{name: remove, min_score: 0.9}, {name: review, min_score: 0.5}, {name: allow, min_score: 0.0}]

    ``positive_label``: the class whose probability is banded (default: the second of two labels).
    """

    tiers: list[Tier] = field(default_factory=list)
    positive_label: Optional[str] = None

    def __post_init__(self):
        self.tiers = [t if isinstance(t, Tier) else Tier(**t) for t in self.tiers]
        if not self.tiers:
            raise FinlightError("decision policy: tiers is empty; give e.g. [{name: act, min_score: 0.5}, "
                                "{name: allow, min_score: 0.0}]")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise FinlightError(f"decision policy: tier names repeat: {names}")
        scores = [t.min_score for t in self.tiers]
        if any(not 0.0 <= s <= 1.0 for s in scores) or any(a <= b for a, b in zip(scores, scores[1:])):
            raise FinlightError(f"decision policy: min_score values {scores} must lie in [0, 1] and strictly "
                                f"decrease from the first tier to the last")
        if scores[-1] != 0.0:
            raise FinlightError(f"decision policy: the last tier ({names[-1]!r}) must have min_score 0, "
                                f"so that every text gets a decision")

    def positive_index(self, label_names: Sequence[str]) -> int:
        return positive_index(label_names, self.positive_label, "decision policy")

    def decide(self, scores: Sequence[float]) -> list[str]:
        """The first tier whose ``min_score`` the score reaches."""
        return [next(t.name for t in self.tiers if s >= t.min_score) for s in scores]

    def summary(self, labels: Sequence[int], scores: Sequence[float]) -> list[dict]:
        """Per tier: how many texts, their share, and the share of real positives among them."""
        decided = np.asarray(self.decide(scores))
        y = np.asarray(labels).astype(bool)
        out = []
        for t in self.tiers:
            inside = decided == t.name
            n = int(inside.sum())
            out.append({"tier": t.name, "min_score": t.min_score, "count": n,
                        "share": n / len(y) if len(y) else 0.0,
                        "positive_rate": float(y[inside].mean()) if n else None})
        return out


def positive_index(label_names: Sequence[str], positive_label: Optional[str], who: str) -> int:
    names = [str(n).casefold() for n in label_names]
    if positive_label is None:
        if len(names) != 2:
            raise FinlightError(f"{who}: {len(names)} labels {list(label_names)}; set positive_label to the class "
                                f"to threshold (one-vs-rest)")
        return 1
    if positive_label.casefold() not in names:
        raise FinlightError(f"{who}: positive_label={positive_label!r} is not among the labels {list(label_names)}")
    return names.index(positive_label.casefold())


# ---------------------------------------------------------------------------------------------- callback
class ThresholdSweep(pl.Callback):
    """At the end of ``test``: sweep thresholds on the validation split's probabilities, choose the operating
    threshold there, apply it to the test split; write ``threshold_sweep.json`` (sweeps, PR curves, choice,
    test at the choice and at 0.5, decision tiers), ``threshold_scores.csv`` (every val/test score),
    ``threshold_sweep.png``, and TensorBoard PR curves and scalars.

    Args:
        positive_label: the class whose probability is thresholded (default: the second of two labels).
        thresholds: the grid (default 0.05 … 0.95 in steps of 0.05).
        select: ``f1`` | ``precision`` (best recall at precision >= target) | ``recall`` (best precision at
            recall >= target).
        target: the precision or recall to reach on validation.
        tiers: optional decision bands to summarise on val and test (see `DecisionPolicy`).
    """

    def __init__(self, positive_label: Optional[str] = None, thresholds: Optional[list[float]] = None,
                 select: Selection = "f1", target: Optional[float] = None, tiers: Optional[list[Tier]] = None,
                 filename: str = "threshold_sweep"):
        if select not in ("f1", "precision", "recall"):
            raise FinlightError(f"ThresholdSweep.select={select!r}: use f1, precision or recall")
        if select != "f1" and (target is None or not 0.0 < target <= 1.0):
            raise FinlightError(f"ThresholdSweep: select={select} needs target in (0, 1], got {target}")
        grid = sorted(thresholds) if thresholds else default_grid()
        if any(not 0.0 < t < 1.0 for t in grid):
            raise FinlightError(f"ThresholdSweep.thresholds must lie strictly between 0 and 1: {grid}")
        self.positive_label = positive_label
        self.thresholds = grid
        self.select = select
        self.target = target
        self.policy = DecisionPolicy(list(tiers), positive_label) if tiers else None
        self.filename = filename
        self.result: Optional[dict] = None
        self._capture = ForwardCapture("ThresholdSweep")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        positive_index(pl_module.label_names, self.positive_label, "ThresholdSweep")  # fail before the loop
        if not hasattr(getattr(trainer, "datamodule", None), "val_dataloader"):
            raise FinlightError("ThresholdSweep needs a data module with a validation split to choose the threshold on")
        self._capture.attach(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture.batch_end(pl_module, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        test = self._capture.result(trainer)  # every rank takes part in the gather
        self._capture.detach()
        if not trainer.is_global_zero:
            return
        if test is None:
            raise FinlightError(f"ThresholdSweep: {self._capture.unusable or 'no test predictions were collected'}")
        val = predict_split(trainer, pl_module, trainer.datamodule.val_dataloader())
        if val.labels is None or test.labels is None:
            raise FinlightError("ThresholdSweep: the validation and test splits need labels")
        self.result = self.evaluate(val, test, pl_module.label_names)
        self._write(trainer, val, test)

    def evaluate(self, val: SplitPredictions, test: SplitPredictions, label_names: Sequence[str]) -> dict:
        """Select on ``val``, report ``test`` at that threshold. Pure: no files, no trainer."""
        k = positive_index(label_names, self.positive_label, "ThresholdSweep")
        yv, sv = (val.labels == k).astype(int), val.probs[:, k]
        yt, st = (test.labels == k).astype(int), test.probs[:, k]
        if yv.sum() == 0 or yv.sum() == len(yv):
            raise FinlightError(f"ThresholdSweep: the validation split has only one class for "
                                f"{label_names[k]!r}; no threshold can be chosen on it")
        val_rows = sweep(yv, sv, self.thresholds)
        chosen, met = choose_threshold(val_rows, self.select, self.target)
        if not met:
            log.warning("ThresholdSweep: no threshold reaches %s >= %s on validation; using the best-F1 "
                        "threshold %.2f instead", self.select, self.target, chosen["threshold"])
        threshold = chosen["threshold"]
        result = {
            "positive_label": label_names[k],
            "rule": {"select": self.select, "target": self.target, "chosen_on": "val"},
            "threshold": threshold, "target_met": met,
            "val": {"at_threshold": chosen, "sweep": val_rows, "pr_curve": pr_curve(yv, sv)},
            "test": {"at_threshold": sweep(yt, st, [threshold])[0], "at_0.5": sweep(yt, st, [0.5])[0],
                     "sweep": sweep(yt, st, self.thresholds), "pr_curve": pr_curve(yt, st)},
        }
        if self.policy is not None:
            result["tiers"] = {"val": self.policy.summary(yv, sv), "test": self.policy.summary(yt, st)}
        return result

    # -------------------------------------------------------------------------------------- outputs
    def _write(self, trainer, val: SplitPredictions, test: SplitPredictions) -> None:
        r = self.result
        folder = run_dir(trainer) or "."
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{self.filename}.json"), "w") as handle:
            json.dump(r, handle, indent=2)
        k = [n.casefold() for n in (trainer.lightning_module.label_names)].index(r["positive_label"].casefold())
        with open(os.path.join(folder, "threshold_scores.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["split", "index", "label", "score"])
            for name, split in (("val", val), ("test", test)):
                for i, y, p in zip(split.index, split.labels, split.probs[:, k]):
                    writer.writerow([name, int(i), int(y == k), f"{p:.8f}"])
        figure = _sweep_figure(r)
        figure.savefig(os.path.join(folder, f"{self.filename}.png"), dpi=120)
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is not None:
            for name, split in (("val", val), ("test", test)):
                tensorboard.experiment.add_pr_curve(f"{name}/pr_curve", (split.labels == k).astype(int),
                                                    split.probs[:, k], trainer.global_step)
            tensorboard.experiment.add_figure("test/threshold_sweep", figure, trainer.global_step, close=False)
        import matplotlib.pyplot as plt

        plt.close(figure)
        at = r["test"]["at_threshold"]
        scalars = {"val/threshold": r["threshold"], "val/f1_at_threshold": r["val"]["at_threshold"]["f1"],
                   "test/precision_at_threshold": at["precision"], "test/recall_at_threshold": at["recall"],
                   "test/f1_at_threshold": at["f1"], "test/average_precision": r["test"]["pr_curve"]["average_precision"]}
        if r["test"]["pr_curve"]["roc_auc"] is not None:
            scalars["test/auroc"] = r["test"]["pr_curve"]["roc_auc"]
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        print(f"finlight: threshold {r['threshold']:.2f} chosen on val ({self.select}"
              f"{'' if self.target is None else f' >= {self.target}'}"
              f"{'' if r['target_met'] else ', target not met: best F1'}); test at it: precision "
              f"{at['precision']:.3f}, recall {at['recall']:.3f}, F1 {at['f1']:.3f} "
              f"(at 0.5: F1 {r['test']['at_0.5']['f1']:.3f}; AP {r['test']['pr_curve']['average_precision']:.3f}, "
              f"ROC AUC {_fmt_auc(r['test']['pr_curve']['roc_auc'])}) → {os.path.join(folder, self.filename)}.json")


def _fmt_auc(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3f}"


def _sweep_figure(result: dict):
    from finlight.core.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("val", "-"), ("test", "--")):
        curve = result[name]["pr_curve"]
        left.plot(curve["recall"], curve["precision"], style,
                  label=f"{name} (AP {curve['average_precision']:.3f})")
    for name, marker in (("val", "o"), ("test", "s")):
        at = result[name]["at_threshold"]
        left.plot([at["recall"]], [at["precision"]], marker, color="black")
    left.set_xlabel("recall")
    left.set_ylabel("precision")
    left.set_title(f"PR curve ({result['positive_label']}); ● val, ■ test at {result['threshold']:.2f}")
    left.legend(loc="lower left")
    rows = result["val"]["sweep"]
    t = [r["threshold"] for r in rows]
    for metric in ("precision", "recall", "f1"):
        right.plot(t, [r[metric] for r in rows], label=f"val {metric}")
    right.plot(t, [r["f1"] for r in result["test"]["sweep"]], "k--", label="test f1")
    right.axvline(result["threshold"], color="gray", linestyle=":")
    right.set_xlabel("threshold")
    right.set_ylim(0, 1.02)
    right.set_title(f"sweep (chosen on val: {result['rule']['select']})")
    right.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
