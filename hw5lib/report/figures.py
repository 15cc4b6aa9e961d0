"""matplotlib only: numpy arrays in, PNG bytes out. No gradients are computed here."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from hw5lib.report.outputs import atomic_write_bytes

DPI = 100
PNG_METADATA = {"Software": None}  # no version string: the bytes depend on the data alone


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered to PNG (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> bytes:
    """Render ``fig`` to PNG, write it atomically and return the bytes (for the manifest hash)."""
    data = png_bytes(fig)
    atomic_write_bytes(path, data)
    return data


def unit_range(maps: np.ndarray) -> np.ndarray:
    """Scale each map [N,H,W] to [0,1] by the min and max of its finite pixels (constant maps
    become 0; NaN and inf pixels become NaN, which draws blank)."""
    finite = np.isfinite(maps)
    lo = np.where(finite, maps, np.inf).min(axis=(1, 2), keepdims=True)
    span = np.where(finite, maps, -np.inf).max(axis=(1, 2), keepdims=True) - lo  # -inf: none
    ok = span > 0
    scaled = (np.where(finite, maps, 0) - np.where(ok, lo, 0)) / np.where(ok, span, 1)
    return np.where(finite, np.where(ok, scaled, 0.0), np.nan)


def symmetric_range(maps: np.ndarray) -> np.ndarray:
    """Scale signed maps [N,H,W] to [-1,1] by each map's largest finite magnitude (0 stays 0;
    NaN and inf pixels become NaN, which draws blank)."""
    finite = np.isfinite(maps)
    clean = np.where(finite, maps, 0)
    top = np.abs(clean).max(axis=(1, 2), keepdims=True)
    return np.where(finite, clean / np.where(top > 0, top, 1), np.nan)


def show_note(ax: plt.Axes, note: str, shape: tuple[int, ...]) -> None:
    """Write ``note`` (why a map could not be drawn) where the map of an image of ``shape``
    (H, W, ...) would be; a blank white image keeps the panel the size of its neighbours."""
    ax.imshow(np.ones((*shape[:2], 3)))
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        textwrap.fill(note, 24),
        ha="center",
        va="center",
        fontsize=6,
        transform=ax.transAxes,
        color="0.3",
    )


def note_of(notes: Sequence[str | None] | None, i: int) -> str | None:
    """Image ``i``'s note, or None (also when there are no notes)."""
    return None if notes is None else notes[i]


def show_image(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw an [H,W,C] image in [0,1] (C = 1 or 3) without axes."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))
    ax.set_axis_off()


def _grid(
    rows: int, cols: int, tile: float = 1.9, title_space: float = 0.6
) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * tile, rows * (tile + 0.35) + title_space), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def finish(fig: Figure, title: str) -> None:
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
    notes: Sequence[str | None] | None = None,
) -> Figure:
    """Each image beside its map. images [N,H,W,C] in [0,1]; maps [N,H,W]; signed maps use a
    diverging colormap centred on zero, unsigned ones a sequential one scaled per map. Where
    ``notes[i]`` is given, it takes the place of map i (why the image could not be explained)."""
    n = len(images)
    rows = math.ceil(n / pairs_per_row)
    fig, axes = _grid(rows, 2 * min(n, pairs_per_row))
    shown = symmetric_range(maps) if signed else unit_range(maps)
    for i in range(n):
        ax_img, ax_map = axes[i // pairs_per_row, 2 * (i % pairs_per_row) :][:2]
        show_image(ax_img, images[i])
        ax_img.set_title(titles[i], fontsize=7)
        ax_map.set_axis_off()
        if (note := note_of(notes, i)) is not None:
            show_note(ax_map, note, images[i].shape)
        elif signed:
            ax_map.imshow(shown[i], cmap="bwr", vmin=-1, vmax=1)
        else:
            ax_map.imshow(shown[i], cmap="inferno", vmin=0, vmax=1)
    finish(fig, title)
    return fig


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
    fig, axes = _grid(len(layers), cols)
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
    fig, axes = _grid(n, nf + 1)
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


def lime_overlay(
    image: np.ndarray, segments: np.ndarray, weights: np.ndarray, top: int = 5
) -> np.ndarray:
    """The image with its ``top`` most positive superpixels tinted green and outlined, the ``top``
    most negative tinted red, the rest dimmed. Returns [H,W,3]."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    order = np.argsort(-weights, kind="stable")
    pos = [s for s in order[:top] if weights[s] > 0]
    neg = [s for s in order[::-1][:top] if weights[s] < 0]
    out = rgb * 0.45 + 0.55 * rgb.mean(axis=-1, keepdims=True) * 0.6  # dimmed, desaturated rest
    for ids, color in ((pos, (0.0, 0.9, 0.0)), (neg, (0.95, 0.0, 0.0))):
        inside = np.isin(segments, ids)
        out[inside] = 0.55 * rgb[inside] + 0.45 * np.array(color)
        out[find_boundaries(np.where(inside, segments, -1), mode="inner") & inside] = color
    return out


def image_pairs(
    left: np.ndarray,
    right: np.ndarray,
    titles: Sequence[str],
    title: str,
    *,
    pairs_per_row: int = 4,
    notes: Sequence[str | None] | None = None,
) -> Figure:
    """Each image [H,W,C] beside a picture made from it (an overlay, an explanation), or beside
    ``notes[i]`` where that is given."""
    n = len(left)
    rows = math.ceil(n / pairs_per_row)
    fig, axes = _grid(rows, 2 * min(n, pairs_per_row))
    for i in range(n):
        ax_img, ax_exp = axes[i // pairs_per_row, 2 * (i % pairs_per_row) :][:2]
        show_image(ax_img, left[i])
        ax_img.set_title(titles[i], fontsize=7)
        if (note := note_of(notes, i)) is not None:
            show_note(ax_exp, note, left[i].shape)
        else:
            show_image(ax_exp, right[i])
    finish(fig, title)
    return fig


def lime_figure(
    images: np.ndarray,
    segments: np.ndarray,
    weights: Sequence[np.ndarray],
    titles: Sequence[str],
    title: str,
    *,
    notes: Sequence[str | None] | None = None,
) -> Figure:
    """Each image beside its LIME explanation (green: for the label, red: against), or beside
    ``notes[i]`` where that is given (why it could not be explained)."""
    overlays = np.stack(
        [lime_overlay(images[i], segments[i], weights[i]) for i in range(len(images))]
    )
    return image_pairs(images, overlays, titles, title, notes=notes)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A [0,1] heat map blended over an image (jet colormap, as CAM papers draw them)."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    colored = plt.get_cmap("jet")(heat)[..., :3]
    return 0.5 * rgb + 0.5 * colored


def cam_grid(
    images: np.ndarray,
    maps: np.ndarray,
    row_titles: Sequence[str],
    col_titles: Sequence[Sequence[str]],
    title: str,
    *,
    notes: Sequence[str | None] | None = None,
) -> Figure:
    """Rows are images: the image, then one overlay per target class.
    images [N,H,W,C]; maps [N,T,H,W] (each scaled to [0,1] here). Where ``notes[r]`` is given,
    it replaces each of image r's overlays (why its maps could not be drawn)."""
    n, t = maps.shape[:2]
    scaled = unit_range(maps.reshape(n * t, *maps.shape[2:])).reshape(maps.shape)
    if t == 1:  # one target per image: image/overlay pairs, four to a row
        overlays = np.stack([overlay(images[r], scaled[r, 0]) for r in range(n)])
        return image_pairs(
            images,
            overlays,
            [f"{a}\n{b[0]}" for a, b in zip(row_titles, col_titles, strict=True)],
            title,
            notes=notes,
        )
    fig, axes = _grid(n, t + 1)
    for r in range(n):
        show_image(axes[r, 0], images[r])
        axes[r, 0].set_title(row_titles[r], fontsize=7)
        note = note_of(notes, r)
        for c in range(t):
            if note is not None:
                show_note(axes[r, c + 1], note, images[r].shape)
            else:
                show_image(axes[r, c + 1], overlay(images[r], scaled[r, c]))
            axes[r, c + 1].set_title(col_titles[r][c], fontsize=7)
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
    fig, axes = _grid(2, n, tile=2.6)
    for i in range(n):
        show_image(axes[0, i], before[i])
        axes[0, i].set_title(titles[i], fontsize=7)
        show_image(axes[1, i], after[i])
    finish(fig, title)
    return fig


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
    fig, axes = _grid(rows, cols, tile=1.7)
    for i in range(n):
        if not np.isnan(images[i]).any():
            show_image(axes[i // cols, i % cols], images[i])
        axes[i // cols, i % cols].set_title(titles[i], fontsize=6)
    finish(fig, title)
    return fig
