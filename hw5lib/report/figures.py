"""matplotlib figures to PNG bytes (fixed DPI, no metadata): the bytes depend on the data alone.
The figures themselves are drawn in attribution_figures, feature_figures, confusion_figures and
convergence_plot, on panels.py's primitives; no gradients are computed in any of them."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hw5lib.report import panels  # noqa: F401 (selects the Agg backend before any drawing)

DPI = 100
PNG_METADATA = {"Software": None}  # no version string: the bytes depend on the data alone


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered to PNG (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return buf.getvalue()
