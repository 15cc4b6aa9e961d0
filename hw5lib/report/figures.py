"""matplotlib figures to PNG bytes (fixed DPI, no metadata), and the appendix's convergence
figure. The per-question figures live in attribution_figures, feature_figures and
confusion_figures; no gradients are computed in any of them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hw5lib.report.outputs import atomic_write_bytes
from hw5lib.report.panels import finish as _finish

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


def convergence_figure(
    lime_samples: Sequence[int] | None,
    lime_cap: int,
    smooth_trace: Sequence[Sequence[float]] | None,
    smooth_round: int,
    ig_trace: Sequence[Sequence[float]] | None,
    ig_gradients: Sequence[Sequence[int]] | None,
    ascent: Sequence[tuple[np.ndarray, np.ndarray]],
    title: str,
) -> Figure:
    """Four panels: LIME samples per image; SmoothGrad's predicted agreement and IG's
    completeness error per round (over the gradients each image had spent, ``ig_gradients``,
    same shape as ``ig_trace``), one line per image; filter ascent curves over steps.
    Non-finite values are left out (a method that failed leaves its panel empty)."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=DPI)
    ax = axes[0]
    if lime_samples:
        ax.bar(range(len(lime_samples)), lime_samples, color="tab:green")
        ax.axhline(lime_cap, color="k", ls="--", lw=1, label=f"cap {lime_cap}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(title="LIME: samples drawn", xlabel="image", ylabel="samples")
    ax = axes[1]
    if smooth_trace and np.isfinite(smooth_trace).any():
        rows = np.array(smooth_trace)  # (rounds, N); matplotlib breaks lines at NaN
        samples = smooth_round * np.arange(1, len(rows) + 1)
        ax.plot(samples, rows, marker="o", lw=1, ms=3)
    ax.axhline(0.98, color="k", ls="--", lw=1)
    ax.set(title="SmoothGrad: predicted agreement", xlabel="samples", ylabel="correlation")
    ax = axes[2]
    if ig_trace and np.isfinite(ig_trace).any():
        rows = np.array(ig_trace, dtype=float)
        rows[~np.isfinite(rows)] = np.nan  # an inf would stretch the log axis to overflow
        steps = np.array(ig_gradients, dtype=float).reshape(rows.shape)
        ax.plot(steps, np.clip(rows, 1e-6, None), marker="o", lw=1, ms=3)
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
    ax.axhline(0.01, color="k", ls="--", lw=1)
    ax.set(title="IG: completeness error", xlabel="gradients", ylabel="error")
    ax = axes[3]
    for steps, curve in ascent:  # one filter: its activation over its own final value
        recorded = curve[np.isfinite(curve)]
        if len(recorded) == 0:  # a filter whose ascent recorded no finite activation
            continue
        final = recorded[-1]
        ax.plot(steps, curve / (final if abs(final) > 1e-12 else 1.0), lw=1)
    ax.axhline(0.9, color="k", ls="--", lw=1)
    ax.set(title="Filter ascent: activation / final", xlabel="step", ylabel="share")
    _finish(fig, title)
    return fig
