"""The appendix's convergence figure: one panel per sampled or iterated method, each drawn from
the ``Panel`` its stage declares (bars per image against a cap, or traces against the level at
which the method stops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hw5lib.report.figures import DPI
from hw5lib.report.panels import finish

# estimate: a quantity its samples converge to (LIME, SmoothGrad, IG); optimization: a climb
# (filter ascent). The figure shows the estimates first.
Kind = Literal["estimate", "optimization"]
PANEL_WIDTH, PANEL_HEIGHT = 4.0, 3.6  # inches


@dataclass(frozen=True)
class Panel:
    """One method's panel: ``bars`` (one per image) under a dashed cap ``level``, or ``lines``,
    each an (x, y) pair as ``Axes.plot`` takes it (2-D y: one line per column), under a dashed
    stopping ``level``. ``reference``: what bench/RESULTS.md compares its converged result with;
    ``note``: a sentence the caption adds about the panel."""

    title: str
    xlabel: str
    ylabel: str
    level: float | None  # None: no line (a cap the time budget cut to the rule's floor)
    kind: Kind = "estimate"
    bars: Sequence[float] = ()
    lines: Sequence[tuple[np.ndarray, np.ndarray]] = ()
    markers: bool = True
    log: bool = False  # log y, log2 x (IG's error over gradients)
    reference: str = ""
    note: str = ""


def draw_panel(ax: plt.Axes, panel: Panel) -> None:
    if panel.bars:
        ax.bar(range(len(panel.bars)), panel.bars, color="tab:green")
        if panel.level is not None:
            ax.axhline(panel.level, color="k", ls="--", lw=1, label=f"cap {panel.level:g}")
            ax.legend(loc="lower right", fontsize=8)
    else:
        style = {"marker": "o", "lw": 1, "ms": 3} if panel.markers else {"lw": 1}
        for x, y in panel.lines:
            ax.plot(x, y, **style)
        if panel.log and panel.lines:
            ax.set_yscale("log")
            ax.set_xscale("log", base=2)
        if panel.level is not None:
            ax.axhline(panel.level, color="k", ls="--", lw=1)
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)


def in_figure_order(panels: Sequence[Panel]) -> list[Panel]:
    """Estimates first, then optimizations, each in the order given (the registry's)."""
    return sorted(panels, key=lambda p: p.kind != "estimate")


def convergence_figure(panels: Sequence[Panel], title: str) -> Figure:
    """One panel per method, side by side (``in_figure_order``)."""
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(PANEL_WIDTH * len(panels), PANEL_HEIGHT),
        dpi=DPI,
        squeeze=False,
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        draw_panel(ax, panel)
    finish(fig, title)
    return fig
