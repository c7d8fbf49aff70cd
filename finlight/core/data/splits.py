"""Stratified, seeded, duplicate-aware train/val/test splits."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from finlight.errors import FinlightError


def check_ratios(ratios) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise FinlightError(f"data.split_ratios must be three non-negative numbers summing to 1, got "
                            f"{tuple(float(r) for r in ratios)}")


def grouped_stratified_split(
    texts: list[str], labels: list[int], ratios: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Split row indices into train/val/test so that every split keeps the label proportions and all rows
    of one text land in the same split (a random split of the Kaggle set leaks 514 conflicting duplicates).

    Groups are stratified by their most frequent label; within each label the groups are shuffled with
    ``seed`` and cut by ``ratios``. Same inputs and seed → same split, independent of process or platform.
    """
    check_ratios(ratios)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        rows_of[text].append(i)
    groups_by_label: dict[int, list[list[int]]] = defaultdict(list)
    for rows in rows_of.values():  # dict order = first occurrence: deterministic
        top_label = Counter(labels[i] for i in rows).most_common(1)[0][0]
        groups_by_label[top_label].append(rows)
    rng = np.random.default_rng(seed)
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in sorted(groups_by_label):
        groups = groups_by_label[label]
        order = rng.permutation(len(groups))
        n_val = int(round(ratios[1] * len(groups)))
        n_test = int(round(ratios[2] * len(groups)))
        for position, g in enumerate(order):
            target = 1 if position < n_val else 2 if position < n_val + n_test else 0
            splits[target].extend(groups[g])
    return tuple(sorted(s) for s in splits)  # type: ignore[return-value]


def stratified_subsample(labels, size: int, seed: int) -> list[int]:
    """Sorted indices of ``size`` rows drawn without replacement, class proportions kept (sklearn's stratified
    ``train_test_split``, seeded).

    Why: a decoder LM on a CPU can afford a few hundred training prompts, not an epoch of thousands; a plain
    ``limit_train_batches`` takes whatever batches come first, not a sample with the split's label mix.
    """
    from sklearn.model_selection import train_test_split

    n, k = len(labels), len(set(labels))
    if size >= n:
        raise FinlightError(f"data.train_subsample={size}: the train split has only {n} rows; lower it or leave "
                            f"it out (null) to train on all of them")
    if size < k:
        raise FinlightError(f"data.train_subsample={size}: needs at least one row per label ({k} labels)")
    kept, _ = train_test_split(np.arange(n), train_size=size, stratify=np.asarray(labels), random_state=seed)
    return sorted(int(i) for i in kept)
