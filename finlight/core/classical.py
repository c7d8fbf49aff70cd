"""``python -m finlight tfidf --config configs/tfidf_phrasebank.yaml [--seed N]``: TF-IDF + logistic regression,
the classical reference row, as a finlight run.

The splits come from the config's ``data`` section through the same data module the neural runs use (same
file, label names, cleaning, duplicate handling, ratios and ``data.seed``), so the test examples are the same,
in the same order, and ``finlight report`` pairs this run with a neural one for McNemar and the bootstrap.

* The vectorizer (word n-grams, ``sublinear_tf``) is fitted on the training split only.
* ``C`` is chosen on the validation split: every value of ``c_grid`` is fitted on train and scored on val by
  ``val/macro_f1`` (ties: the smaller C, the stronger regularisation); the chosen model — still trained on train
  alone, like the neural runs — is then scored once on test. Test labels never reach the choice.
* ``data.class_weights`` (``balanced`` or a list) become LogisticRegression's ``class_weight``, and weight the
  reported loss as they weight the neural cross-entropy (``sum w[y]·ℓ / sum w[y]``).

The run folder ``logs/<experiment>/version_N/`` holds what a neural ``test`` leaves there and ``report`` reads:
``config.yaml`` (these settings, ``seed_everything`` included), ``test_metrics.json`` (the same metric names:
``test/acc``, ``test/macro_f1``, ``test/weighted_f1``, ``test/loss``, per-class ``test/{precision,recall,f1}_<label>``;
the C grid under ``"selected"``), ``test_predictions.csv`` (``index, text, label, predicted, prob_<label>…``),
``data_report.json``, the confusion-matrix PNGs and TensorBoard events with the chosen C's ``val/*`` at epoch 0.

lbfgs is deterministic: the seed changes nothing in the fit (it is passed to ``random_state`` for solvers that
use one). It labels the run, so that ``report`` pairs it with the neural run of the same seed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch import LightningDataModule

from finlight.commands import check_config_files, run_command
from finlight.errors import FinlightError

log = logging.getLogger("finlight.classical")
DEFAULT_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
MONITOR = "val/macro_f1"


@dataclass
class TfidfSettings:
    c_grid: Sequence[float] = DEFAULT_C_GRID
    max_ngram: int = 2
    min_df: int = 1
    sublinear_tf: bool = True
    max_features: Optional[int] = None
    max_iter: int = 5000
    seed: int = 42


@dataclass
class TfidfResult:
    C: float
    grid: list[dict]                              # [{C, val/macro_f1, val/acc, val/loss}], ascending C
    val: dict[str, float]                         # the chosen model's val/* metrics
    test: dict[str, float]                        # test/* metrics
    test_probs: np.ndarray                        # [n_test, k]
    confusion: list[list[int]] = field(default_factory=list)
    vocabulary_size: int = 0


# ---------------------------------------------------------------------------------------------- pure parts
def split_metrics(labels: Sequence[int], probs: np.ndarray, label_names: Sequence[str], stage: str,
                  class_weights: Optional[Sequence[float]] = None) -> dict[str, float]:
    """The metrics a neural run logs for ``stage``, from per-example probabilities (predictions: their argmax,
    as ``report`` reads them back): acc, macro/weighted F1 (over the classes present in labels or predictions,
    as torchmetrics), per-class precision / recall / F1 (0 where undefined), and the (class-weighted) log loss."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y = np.asarray(labels, dtype=int)
    predicted = np.asarray(probs).argmax(axis=1)
    k = len(label_names)
    out = {f"{stage}/acc": float(accuracy_score(y, predicted)),
           f"{stage}/macro_f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
           f"{stage}/weighted_f1": float(f1_score(y, predicted, average="weighted", zero_division=0))}
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=list(range(k)), zero_division=0)
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out.update({f"{stage}/{name}_{label}": float(v) for label, v in zip(label_names, values)})
    weights = np.ones(k) if class_weights is None else np.asarray(class_weights, dtype=float)
    nll = -np.log(np.clip(np.asarray(probs, dtype=float)[np.arange(len(y)), y], 1e-15, None))
    out[f"{stage}/loss"] = float(np.sum(weights[y] * nll) / np.sum(weights[y]))
    return dict(sorted(out.items()))


def _fit(vectorizer, train_texts, train_labels, C: float, settings: TfidfSettings,
         class_weights: Optional[Sequence[float]]):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=settings.max_iter, random_state=settings.seed,
                               class_weight=None if class_weights is None else dict(enumerate(class_weights)))
    model.fit(vectorizer.transform(train_texts), train_labels)
    return model


def _probs(model, vectorizer, texts: Sequence[str], k: int) -> np.ndarray:
    """``[n, k]`` probabilities in label-index order (a class absent from train gets 0)."""
    probs = np.zeros((len(texts), k))
    if texts:
        probs[:, model.classes_] = model.predict_proba(vectorizer.transform(texts))
    return probs


def fit_tfidf(train: tuple[Sequence[str], Sequence[int]], val: tuple[Sequence[str], Sequence[int]],
              test: tuple[Sequence[str], Sequence[int]], label_names: Sequence[str],
              settings: TfidfSettings = TfidfSettings(),
              class_weights: Optional[Sequence[float]] = None) -> TfidfResult:
    """Vectorizer on train; C by ``val/macro_f1`` over ``settings.c_grid``; the chosen model scored on test.
    Test texts and labels are used only after C is fixed."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import confusion_matrix
    from threadpoolctl import threadpool_limits

    (train_texts, train_labels), (val_texts, val_labels), (test_texts, test_labels) = train, val, test
    k = len(label_names)
    if not train_texts or len(set(train_labels)) < 2:
        raise FinlightError(f"tfidf: the training split has {len(train_texts)} examples and "
                            f"{len(set(train_labels))} class(es); logistic regression needs two or more")
    if not val_texts:
        raise FinlightError("tfidf: the validation split is empty; C is chosen on it (set data.split_ratios "
                            "with a validation share, or data.val_path)")
    vectorizer = TfidfVectorizer(ngram_range=(1, settings.max_ngram), min_df=settings.min_df,
                                 sublinear_tf=settings.sublinear_tf, max_features=settings.max_features)
    vectorizer.fit(train_texts)
    grid, best = [], None
    # a problem this small gains nothing from BLAS threads, and on a busy machine they cost ~20x (lbfgs' calls)
    with threadpool_limits(1):
        for C in sorted(float(c) for c in settings.c_grid):
            model = _fit(vectorizer, train_texts, train_labels, C, settings, class_weights)
            scores = split_metrics(val_labels, _probs(model, vectorizer, val_texts, k), label_names, "val",
                                   class_weights)
            grid.append({"C": C, MONITOR: scores[MONITOR], "val/acc": scores["val/acc"],
                         "val/loss": scores["val/loss"]})
            log.info("tfidf: C=%g  val/macro_f1 %.4f  val/acc %.4f", C, scores[MONITOR], scores["val/acc"])
            if best is None or scores[MONITOR] > best[2][MONITOR]:  # strictly better: ties keep the smaller C
                best = (C, model, scores)
    C, model, val_scores = best
    test_probs = _probs(model, vectorizer, test_texts, k)
    test_scores = split_metrics(test_labels, test_probs, label_names, "test", class_weights) if test_texts else {}
    confusion = (confusion_matrix(test_labels, test_probs.argmax(axis=1), labels=list(range(k))).tolist()
                 if test_texts else [])
    return TfidfResult(C=C, grid=grid, val=val_scores, test=test_scores, test_probs=test_probs,
                       confusion=confusion, vocabulary_size=len(vectorizer.vocabulary_))


# ---------------------------------------------------------------------------------------------- the run
def _yaml_ready(value):
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    return value


def build_datamodule(data: dict):
    """The data module of a config's ``data: {class_path, init_args}``, set up (read, cleaned, split)."""
    import importlib

    class_path = str(data.get("class_path") or "finlight.core.ClassificationDataModule")
    module, _, name = class_path.rpartition(".")
    datamodule = getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
    datamodule.setup("fit")
    for split in ("train", "val", "test"):
        if split not in getattr(datamodule, "splits", {}) or split not in getattr(datamodule, "labels", {}):
            raise FinlightError(f"tfidf: {class_path} has no {split!r} split after setup (needs .splits and "
                                f".labels like ClassificationDataModule)")
    return datamodule


def tfidf_command(data: LightningDataModule, seed_everything: NonNegativeInt = 42, experiment: Optional[str] = None,
                  save_dir: str = "logs", c_grid: list[PositiveFloat] = list(DEFAULT_C_GRID),
                  max_ngram: PositiveInt = 2, min_df: PositiveInt = 1, sublinear_tf: bool = True,
                  max_features: Optional[PositiveInt] = None, max_iter: PositiveInt = 5000,
                  write_png: bool = True) -> str:
    """TF-IDF + logistic regression on a config's data splits; C chosen on validation, scored on test; writes a
    run folder that `report` compares with neural runs. ``--seed N`` is short for ``--seed_everything N``.

    Args:
        data: the data module, as in a training config (class_path + init_args).
        seed_everything: the run's seed (recorded for `report`'s pairing; lbfgs is deterministic).
        experiment: run name under save_dir (default: the config file's name).
        save_dir: root of the run folders.
        c_grid: inverse regularisation strengths tried on the validation split.
        max_ngram: word n-grams 1..max_ngram.
        min_df: minimum document frequency (in the training split) of a vocabulary term.
        sublinear_tf: 1 + log(tf) instead of raw counts.
        max_features: keep only the most frequent terms (default: all).
        max_iter: lbfgs iterations.
        write_png: write test confusion-matrix images.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    from finlight.core.callbacks.collect import SplitPredictions, write_split_predictions

    settings = TfidfSettings(c_grid=c_grid, max_ngram=max_ngram, min_df=min_df, sublinear_tf=sublinear_tf,
                             max_features=max_features, max_iter=max_iter, seed=seed_everything)
    data = _yaml_ready(data)
    datamodule = build_datamodule(data)
    names = list(datamodule.label_names)
    split = {s: ([r.text for r in datamodule.splits[s]], list(datamodule.labels[s])) for s in ("train", "val", "test")}
    if not split["test"][0]:
        raise FinlightError("tfidf: the test split is empty; nothing to report")
    result = fit_tfidf(split["train"], split["val"], split["test"], names, settings, datamodule.class_weights)

    name = experiment or "tfidf"
    logger = TensorBoardLogger(save_dir, name=name, default_hp_metric=False)
    folder = logger.log_dir
    os.makedirs(folder, exist_ok=True)
    logger.log_metrics({**result.val, "epoch": 0}, step=0)
    logger.save()
    logger.finalize("success")
    config = {"seed_everything": seed_everything, "experiment": name, "save_dir": save_dir,
              "data": data, "c_grid": sorted(float(c) for c in c_grid), "max_ngram": max_ngram, "min_df": min_df,
              "sublinear_tf": sublinear_tf, "max_features": max_features, "max_iter": max_iter,
              "write_png": write_png}
    _write_yaml(os.path.join(folder, "config.yaml"), config)
    _write_json(os.path.join(folder, "data_report.json"), datamodule.report)
    selected = {"how": f"C={result.C:g} (val grid)", "monitor": MONITOR, "mode": "max",
                "value": result.val[MONITOR], "C": result.C, "grid": result.grid,
                "vocabulary_size": result.vocabulary_size,
                "model": f"TfidfVectorizer(ngram_range=(1, {max_ngram}), min_df={min_df}, sublinear_tf={sublinear_tf}"
                         f", max_features={max_features}) + LogisticRegression(lbfgs, C={result.C:g})"}
    _write_json(os.path.join(folder, "test_metrics.json"), {
        "checkpoint": None, "label_names": names, "metrics": result.test,
        "confusion_matrix": result.confusion, "selected": selected})
    test_texts, test_labels = split["test"]
    predictions = SplitPredictions(np.arange(len(test_texts)), np.asarray(test_labels), result.test_probs)
    write_split_predictions(os.path.join(folder, "test_predictions.csv"), predictions, names, test_texts)
    if write_png:
        _confusion_pngs(folder, np.asarray(result.confusion, dtype=float), names)
    print(f"finlight tfidf: C={result.C:g} chosen on validation (val/macro_f1 {result.val[MONITOR]:.4f}, "
          f"val/acc {result.val['val/acc']:.4f}); test/acc {result.test['test/acc']:.4f}, "
          f"test/macro_f1 {result.test['test/macro_f1']:.4f} → {folder}")
    return folder


def _confusion_pngs(folder: str, raw: np.ndarray, names: list[str]) -> None:
    from finlight.core.plots import confusion_matrix_figure, plt

    normalized = raw / np.clip(raw.sum(axis=1, keepdims=True), 1, None)
    for kind, matrix in (("raw", raw), ("normalized", normalized)):
        figure = confusion_matrix_figure(matrix, names, f"test confusion ({kind})", kind == "normalized")
        figure.savefig(os.path.join(folder, f"test_confusion_{kind}.png"), dpi=120)
        plt.close(figure)


def _write_json(path: str, content: dict) -> None:
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2, default=str)


def _write_yaml(path: str, content: dict) -> None:
    import yaml

    with open(path, "w") as handle:
        yaml.safe_dump(content, handle, sort_keys=False)


def tfidf_main(argv: list[str]) -> str:
    argv = ["--seed_everything" if a == "--seed" else ("--seed_everything=" + a[len("--seed="):]
            if a.startswith("--seed=") else a) for a in argv]
    check_config_files(argv)
    return run_command(tfidf_command, _default_experiment(argv), "tfidf")


def _default_experiment(argv: list[str]) -> list[str]:
    """No ``--experiment`` on the command line or in the config: the (last) config file's name, as for fit."""
    import yaml

    if any(a == "--experiment" or a.startswith("--experiment=") for a in argv):
        return argv
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config" and os.path.isfile(argv[i + 1])]
    if not configs:
        return argv
    for path in configs:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
        if isinstance(content, dict) and content.get("experiment"):
            return argv
    return argv + ["--experiment", os.path.splitext(os.path.basename(configs[-1]))[0]]
