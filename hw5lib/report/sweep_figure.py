"""A setting swept over the explained images: the images on top, then one row of maps per
value of the setting (SmoothGrad's noise std). Arrays in, a matplotlib figure out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from hw5lib.report.panels import finish, grid, show_image, unit_range

TILE = 1.25  # inches per panel: 11 images x 6 rows stay one readable page-wide figure


def sweep_rows(
    images: np.ndarray,
    maps: np.ndarray,
    titles: Sequence[str],
    row_labels: Sequence[str],
    title: str,
) -> Figure:
    """images [N,H,W,C] in [0,1] as the first row; maps [S,N,H,W], row s labelled
    ``row_labels[s]`` on its first panel, each map scaled to its own range (inferno)."""
    s, n = maps.shape[:2]
    fig, axes = grid(s + 1, n, tile=TILE)
    for i in range(n):
        show_image(axes[0, i], images[i])
        axes[0, i].set_title(titles[i], fontsize=6)
    for r in range(s):
        shown = unit_range(maps[r])  # (N, H, W): NaN pixels draw blank
        for i in range(n):
            axes[r + 1, i].imshow(shown[i], cmap="inferno", vmin=0, vmax=1)
        axes[r + 1, 0].set_title(row_labels[r], fontsize=7, loc="left", fontweight="bold")
    finish(fig, title)
    return fig
