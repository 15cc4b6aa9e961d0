"""matplotlib only: numpy arrays in, PNG bytes out. No gradients are computed here."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from .outputs import atomic_write_bytes  # noqa: E402

DPI = 100
PNG_METADATA = {"Software": None}  # no version string: the bytes depend on the data alone


def save_png(fig: Figure, path: Path) -> bytes:
    """Render ``fig`` to PNG, write it atomically and return the bytes (for the manifest hash)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def unit_range(maps: np.ndarray) -> np.ndarray:
    """Scale each map [N,H,W] to [0,1] by its own min and max (constant maps become 0)."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0)


def symmetric_range(maps: np.ndarray) -> np.ndarray:
    """Scale signed maps [N,H,W] to [-1,1] by each map's largest magnitude (0 stays 0)."""
    top = np.abs(maps).max(axis=(1, 2), keepdims=True)
    return maps / np.where(top > 0, top, 1)


def show_image(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw an [H,W,C] image in [0,1] (C = 1 or 3) without axes."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))
    ax.set_axis_off()


def _grid(rows: int, cols: int, tile: float = 1.9, title_space: float = 0.6) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * tile, rows * (tile + 0.35) + title_space), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _finish(fig: Figure, title: str) -> None:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()


def image_map_pairs(
    images: np.ndarray,
    maps: np.ndarray,
    titles: Sequence[str],
    title: str,
    *,
    signed: bool = False,
    pairs_per_row: int = 4,
) -> Figure:
    """Each image beside its map. images [N,H,W,C] in [0,1]; maps [N,H,W]; signed maps use a
    diverging colormap centred on zero, unsigned ones a sequential one scaled per map."""
    n = len(images)
    rows = math.ceil(n / pairs_per_row)
    fig, axes = _grid(rows, 2 * min(n, pairs_per_row))
    shown = symmetric_range(maps) if signed else unit_range(maps)
    for i in range(n):
        ax_img, ax_map = axes[i // pairs_per_row, 2 * (i % pairs_per_row) :][:2]
        show_image(ax_img, images[i])
        ax_img.set_title(titles[i], fontsize=7)
        if signed:
            ax_map.imshow(shown[i], cmap="bwr", vmin=-1, vmax=1)
        else:
            ax_map.imshow(shown[i], cmap="inferno", vmin=0, vmax=1)
        ax_map.set_axis_off()
    _finish(fig, title)
    return fig


def filter_grid(
    layers: Sequence[str],
    pixels: Sequence[np.ndarray],
    filters: Sequence[Sequence[int]],
    gains: Sequence[Sequence[float]],
    title: str,
) -> Figure:
    """One row per layer: the image each filter's gradient ascent produced.
    pixels[l] is [F,H,W,C] in [0,1]; gains[l][f] is the activation reached / on the start noise."""
    cols = max(len(f) for f in filters)
    fig, axes = _grid(len(layers), cols)
    for r, name in enumerate(layers):
        for c, f in enumerate(filters[r]):
            img = pixels[r][c]
            lo, hi = img.min(), img.max()
            show_image(axes[r, c], (img - lo) / (hi - lo) if hi > lo else img)
            axes[r, c].set_title(f"{name} filter {f}\nx{gains[r][c]:.1f} vs noise", fontsize=7)
    _finish(fig, title)
    return fig


def activation_grid(
    images: np.ndarray,
    activations: np.ndarray,
    filters: Sequence[int],
    row_titles: Sequence[str],
    title: str,
) -> Figure:
    """Rows are images: the image, then each filter's activation map on it.
    images [N,H,W,C]; activations [N,F,h,w], all maps of one filter share one color scale."""
    n, nf = activations.shape[:2]
    fig, axes = _grid(n, nf + 1)
    top = activations.max(axis=(0, 2, 3))
    for r in range(n):
        show_image(axes[r, 0], images[r])
        axes[r, 0].set_title(row_titles[r], fontsize=7)
        for c in range(nf):
            axes[r, c + 1].imshow(activations[r, c], cmap="viridis", vmin=0, vmax=max(top[c], 1e-12))
            if r == 0:
                axes[r, c + 1].set_title(f"filter {filters[c]}", fontsize=7)
    _finish(fig, title)
    return fig


def lime_overlay(image: np.ndarray, segments: np.ndarray, weights: np.ndarray, top: int = 5) -> np.ndarray:
    """The image with its ``top`` most positive superpixels tinted green and ``top`` most
    negative tinted red, superpixel borders drawn in yellow. Returns [H,W,3]."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    order = np.argsort(-weights, kind="stable")
    pos = [s for s in order[:top] if weights[s] > 0]
    neg = [s for s in order[::-1][:top] if weights[s] < 0]
    tint = np.zeros_like(rgb)
    alpha = np.zeros(rgb.shape[:2])
    for ids, color in ((pos, (0.0, 0.85, 0.0)), (neg, (0.9, 0.0, 0.0))):
        inside = np.isin(segments, ids)
        tint[inside] = color
        alpha[inside] = 0.45
    out = rgb * (1 - alpha[..., None]) + tint * alpha[..., None]
    out[find_boundaries(segments, mode="inner")] = (1.0, 1.0, 0.0)
    return out


def lime_figure(
    images: np.ndarray,
    segments: np.ndarray,
    weights: Sequence[np.ndarray],
    titles: Sequence[str],
    title: str,
    *,
    pairs_per_row: int = 4,
) -> Figure:
    """Each image beside its LIME explanation (green: for the label, red: against)."""
    overlays = [lime_overlay(images[i], segments[i], weights[i]) for i in range(len(images))]
    n = len(images)
    rows = math.ceil(n / pairs_per_row)
    fig, axes = _grid(rows, 2 * min(n, pairs_per_row))
    for i in range(n):
        ax_img, ax_exp = axes[i // pairs_per_row, 2 * (i % pairs_per_row) :][:2]
        show_image(ax_img, images[i])
        ax_img.set_title(titles[i], fontsize=7)
        show_image(ax_exp, overlays[i])
    _finish(fig, title)
    return fig
