"""What every stage shares: the registry entry's shape (Stage, Method, Share), the typed result a
stage returns, and saving one per-pixel attribution as PNG + NPZ + figure record."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions, metrics
from hw5lib.report import attribution_figures
from hw5lib.run.budget import Cut, Work
from hw5lib.run.context import Run

# explain(model, x [N,C,H,W], target [N]) -> maps [N,H,W], what the trust table reruns.
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]
# (d logit[target] / d x [N,C,H,W], x) -> maps [N,H,W]: a map made from the input gradient alone.
FromGradient = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class FigureRecord:
    """One figure as the manifest and the report see it."""

    id: str
    section: str  # Q1..Q4 or Appendix: where the report puts it
    title: str
    caption: str
    png: str
    npz: str | None
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": self.section,
            "title": self.title,
            "caption": self.caption,
            "png": self.png,
            "npz": self.npz,
            "params": dict(self.params),
        }


@dataclass
class StageResult:
    """What a stage hands back: its figures and, for the trust table, each method's map of the
    explained images. Adaptive stages add ``share``, the share of their cap they spent."""

    figures: list[FigureRecord] = field(default_factory=list)
    maps: dict[str, Tensor] = field(default_factory=dict)  # method -> [N,H,W]
    share: float | None = None


# What the budget planner uses to price a stage: share is the expected share of its cap an
# adaptive method spends (measured in this run once it ran, else ``Share.expected``).
Shares = Mapping[str, float]
Cost = Callable[[Run, RunConfig, Shares], Work]


@dataclass(frozen=True)
class Share:
    """An adaptive stage's spending: ``expected`` before the run measured it (the sample set's
    mean in bench/RESULTS.md, rounded up) and ``at_cap`` when nothing converges."""

    expected: float
    at_cap: Callable[[RunConfig], float] = lambda cfg: 1.0


@dataclass(frozen=True)
class Method:
    """A map method the trust table scores: ``explain`` builds its explain(model, x, target)
    with the run's settings for the randomization check (None: no rerun, e.g. LIME)."""

    name: str
    explain: Callable[[Run], Explain] | None = None
    sampled: bool = False  # costly to rerun: the budget drops its randomization check first
    # Where the map is a function of the input gradient (as ``explain`` computes it), the
    # trust table computes that gradient once for all such methods.
    from_gradient: Callable[[Run], FromGradient | None] | None = None


@dataclass(frozen=True)
class Stage:
    """One registry entry: a report figure (family) and everything the runner needs of it."""

    name: str  # as the progress bar, the cuts and the manifest name it
    section: str  # the report section of its figures
    run: Callable[[Run, tqdm], StageResult]
    cost: Cost  # the work it will do under a config, for --budget
    units: Callable[[Run], int] = lambda run: 1  # progress-bar steps
    cuts: tuple[Cut, ...] = ()  # ways the budget planner can make it cheaper
    options: tuple[str, ...] = ()  # the RunConfig fields it reads
    methods: tuple[Method, ...] = ()  # its rows in the trust table
    share: Share | None = None  # adaptive: how much of its cap it is expected to spend
    hooks: bool = False  # reads inside the model (no TorchScript)
    figures: Callable[[Run], tuple[str, ...]] = lambda run: ()  # the ids it plans to write


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
    run.write_png(f"{fid}.png", fig)
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
