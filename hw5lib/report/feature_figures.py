"""Figures of what the network's features respond to: filter ascent images and activation maps
(Q2), one layer's feature maps and DeepDream (Q4). Arrays in, matplotlib figures out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hw5lib.report.panels import finish, grid, show_image, unit_range


def filter_grid(
    layers: Sequence[str],
    pixels: Sequence[np.ndarray],
    filters: Sequence[Sequence[int]],
    gains: Sequence[Sequence[float]],
    title: str,
) -> Figure:
    """One row per layer: the image each filter's gradient ascent produced.
    pixels[l] is [F,H,W,C] in [0,1]; gains[l][f] is (activation reached, on the start image, on the
    best real image)."""
    cols = max(len(f) for f in filters)
    fig, axes = grid(len(layers), cols)
    for r, name in enumerate(layers):
        for c, f in enumerate(filters[r]):
            img = pixels[r][c]
            show_image(axes[r, c], img)  # pixels already lie in [0,1]: no stretching
            end, start, best = gains[r][c]
            axes[r, c].set_title(
                f"{name} filter {f}\n{end:.2f} (start {start:.2f}, real {best:.2f})", fontsize=7
            )
    finish(fig, title)
    return fig


def activation_grid(
    images: np.ndarray,
    activations: np.ndarray,
    filters: Sequence[int],
    row_titles: Sequence[str],
    title: str,
) -> Figure:
    """Rows are images: the image, then each filter's activation map on it.
    images [N,H,W,C]; activations [N,F,h,w], all maps of one filter share one color scale
    (non-finite values draw blank)."""
    n, nf = activations.shape[:2]
    fig, axes = grid(n, nf + 1)
    finite = np.isfinite(activations)
    top = np.where(finite, activations, 0).max(axis=(0, 2, 3))
    activations = np.where(finite, activations, np.nan)
    for r in range(n):
        show_image(axes[r, 0], images[r])
        axes[r, 0].set_title(row_titles[r], fontsize=7)
        for c in range(nf):
            axes[r, c + 1].imshow(
                activations[r, c], cmap="viridis", vmin=0, vmax=max(top[c], 1e-12)
            )
            if r == 0:
                axes[r, c + 1].set_title(f"filter {filters[c]}", fontsize=7)
    finish(fig, title)
    return fig


def feature_grid(activations: np.ndarray, title: str, per_row: int = 16) -> Figure:
    """Every channel [K,h,w] of one layer for one image, ``per_row`` to a row, each on its own
    color scale. One mosaic image, not K axes: a 512-channel layer drew in 20 s as axes."""
    k, h, w = activations.shape
    rows = math.ceil(k / per_row)
    scaled = unit_range(activations)  # (K, h, w) in [0, 1]; NaN where not finite: white
    mosaic = np.full((rows * (h + 1) - 1, per_row * (w + 1) - 1), np.nan)  # NaN gaps: white
    for i in range(k):
        r, c = divmod(i, per_row)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = scaled[i]
    fig, ax = plt.subplots(figsize=(per_row * 0.8, rows * 0.8 * h / w + 0.8))
    ax.imshow(mosaic, cmap="viridis", interpolation="nearest")
    ax.set_xticks(np.arange(per_row) * (w + 1) + (w - 1) / 2, [str(c) for c in range(per_row)])
    ax.set_yticks(np.arange(rows) * (h + 1) + (h - 1) / 2, [str(r * per_row) for r in range(rows)])
    ax.tick_params(labelsize=6, length=0)
    ax.set_xlabel("channel = row label + column", fontsize=7)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


def before_after(
    before: np.ndarray, after: np.ndarray, titles: Sequence[str], title: str
) -> Figure:
    """Two rows: the original images and what became of them (e.g. DeepDream)."""
    n = len(before)
    fig, axes = grid(2, n, tile=2.6)
    for i in range(n):
        show_image(axes[0, i], before[i])
        axes[0, i].set_title(titles[i], fontsize=7)
        show_image(axes[1, i], after[i])
    finish(fig, title)
    return fig
