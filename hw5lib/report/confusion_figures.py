"""Figures of the classifier's accuracy (Q3): the confusion matrix and example images per
class. Arrays in, matplotlib figures out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hw5lib.report.panels import finish, grid, show_image


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Row-normalized confusion matrix with the counts written in each cell."""
    k = len(classes)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def example_grid(images: np.ndarray, titles: Sequence[str], cols: int, title: str) -> Figure:
    """Images in a grid of ``cols`` columns (blank cells where an image is missing: NaN)."""
    n = len(images)
    rows = math.ceil(n / cols)
    fig, axes = grid(rows, cols, tile=1.7)
    for i in range(n):
        if not np.isnan(images[i]).any():
            show_image(axes[i // cols, i % cols], images[i])
        axes[i // cols, i % cols].set_title(titles[i], fontsize=6)
    finish(fig, title)
    return fig
