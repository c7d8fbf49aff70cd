"""Figures (matplotlib, headless)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix_figure(matrix: np.ndarray, label_names: Sequence[str], title: str, normalized: bool):
    """Rows = true class, columns = predicted; row-normalised matrices show per-class recall on the diagonal."""
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 2))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else max(matrix.max(), 1))
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (1 if normalized else matrix.max()) / 2
    for i in range(k):
        for j in range(k):
            text = f"{matrix[i, j]:.2f}" if normalized else f"{int(matrix[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    return fig
