"""What stages share to write their figures: saving one per-pixel attribution as PNG + NPZ +
figure record, a figure as PNG, and the captions' sentences on masks, unexplained images and
sample counts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hw5lib.methods import attributions, metrics
from hw5lib.report import attribution_figures, figures
from hw5lib.stages.context import Run
from hw5lib.stages.protocol import FigureRecord


def write_png(run: Run, name: str, fig: figures.Figure) -> None:
    run.write(name, figures.png_bytes(fig))


def explained(run: Run) -> int:
    return len(run.subject.paths)


def samples_text(used: Tensor) -> str:
    lo, hi = int(used.min()), int(used.max())
    return str(lo) if lo == hi else f"{lo}-{hi} (mean {float(used.float().mean()):.0f})"


def mask_caption(run: Run, maps: np.ndarray) -> str:
    """Where masks exist: share of the positive map inside the object vs the object's area."""
    masks = run.subject.masks
    if masks is None:
        return ""
    inside = float(metrics.mass_inside(torch.as_tensor(maps), torch.from_numpy(masks)).nanmean())
    return (
        f" Mean share of the positive attribution inside the object mask: {number(inside)}"
        f" (the object covers {masks.mean():.2f} of the image on average)."
    )


def unexplained(run: Run, reasons: Sequence[str | None]) -> dict[str, str]:
    """File name -> why its map explains nothing, for the images that have a reason."""
    return {p.name: why for p, why in zip(run.subject.paths, reasons, strict=False) if why}


def unexplained_caption(missing: Mapping[str, str]) -> str:
    """The caption's sentence on images a method could not explain (empty when there are none)."""
    if not missing:
        return ""
    by_reason: dict[str, list[str]] = {}
    for name, why in missing.items():
        by_reason.setdefault(why, []).append(name)
    listed = "; ".join(f"{why}: {', '.join(names)}" for why, names in by_reason.items())
    return f" {len(missing)} of the images could not be explained ({listed})."


def number(value: float, spec: str = ".2f") -> str:
    """A number for a caption; 'n/a' where it is NaN or infinite (a caption never shows nan)."""
    return format(value, spec) if math.isfinite(value) else "n/a"


def save_attribution(
    run: Run,
    fid: str,
    section: str,
    title: str,
    caption: str,
    maps: Tensor,
    *,
    signed: bool = False,
    params: Mapping[str, Any] | None = None,
    raw: Tensor | None = None,
    shown: Tensor | None = None,
) -> FigureRecord:
    """The figure, the raw arrays and the record of one per-pixel attribution method. An image
    whose map explains nothing (not finite, zero everywhere) shows why instead of the map.
    ``shown`` [N,H,W,C] in [0,1] is drawn beside each image instead of the map's heat map."""
    s = run.subject
    arr = maps.detach().cpu().numpy().astype(np.float32)
    reasons = attributions.why_unexplained(arr)
    titles = s.titles(run.classes)
    fig = (
        attribution_figures.image_map_pairs(
            s.pixels, arr, titles, title, signed=signed, notes=reasons
        )
        if shown is None
        else attribution_figures.image_pairs(
            s.pixels, shown.cpu().numpy(), titles, title, notes=reasons
        )
    )
    write_png(run, f"{fid}.png", fig)
    run.write_npz(
        f"{fid}.npz",
        input=s.x.cpu().numpy().astype(np.float32),
        target=s.target.cpu().numpy(),
        attribution=(raw if raw is not None else maps).detach().cpu().numpy().astype(np.float32),
        map=arr,
        files=np.array([p.name for p in s.paths]),
    )
    missing = unexplained(run, reasons)
    caption += unexplained_caption(missing) + mask_caption(run, arr)
    params = {**(params or {}), **({"unexplained": missing} if missing else {})}
    return FigureRecord(fid, section, title, caption, f"{fid}.png", f"{fid}.npz", params)
