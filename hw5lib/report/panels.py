"""Drawing primitives every report figure shares: scaling maps for a colormap, one image or
note per panel, a grid of panels, the title. matplotlib only, Agg backend (no display)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


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


def grid(
    rows: int, cols: int, tile: float = 1.9, title_space: float = 0.6
) -> tuple[Figure, np.ndarray]:
    """A rows x cols grid of empty panels, ``tile`` inches square plus room for panel titles
    and the figure title."""
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * tile, rows * (tile + 0.35) + title_space), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def finish(fig: Figure, title: str) -> None:
    """Put the figure's title on top and pack the panels."""
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
