"""Figures of per-image explanations: each image beside its attribution map, LIME
explanation or CAM overlays (Q1, Q3 LIME, Q4 gradient methods and CAMs). Arrays in, matplotlib
figures out; no gradients are computed here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from hw5lib.report.panels import (
    finish,
    grid,
    note_of,
    show_image,
    show_note,
    symmetric_range,
    unit_range,
)


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
    fig, axes = grid(rows, 2 * min(n, pairs_per_row))
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
    fig, axes = grid(rows, 2 * min(n, pairs_per_row))
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
    fig, axes = grid(n, t + 1)
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
