"""Q2: filter visualization by gradient ascent, and those filters' activation maps. Its layers
and the ascent on each are in ``filter_layers``, its caption's text in ``filter_captions``, each
layer's activation-maps figure in ``filter_activations``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course, filters
from hw5lib.methods.filter_choice import LayerDecision, gains
from hw5lib.model.layers import resolve_layer
from hw5lib.report import feature_figures
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.context import Run, Shares
from hw5lib.stages.costs import Cut, Deadline, Work
from hw5lib.stages.filter_activations import activation_id, activation_record
from hw5lib.stages.filter_captions import ascent_text, summary
from hw5lib.stages.filter_layers import (
    DECISION,
    SECTION,
    ascent_work,
    climb,
    filter_layer_names,
    planned_layers,
    tiled_canvases,
)
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.record import write_png
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import ITERATED_VALUES, RANKED, ArrayRule

NAME = "Q2 filters"
GUIDE_SHARE = 0.9  # the convergence panel's dashed line: 90% of the final activation


@dataclass
class FiltersResult(StageResult):
    curves: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per filter
    layers: list[LayerDecision] = field(default_factory=list)  # what a replay makes again

    def decisions(self) -> dict[str, Any]:
        return {DECISION: [d.to_dict() for d in self.layers]}

    def convergence_panel(self) -> Panel:
        """Each filter's activation over its final value, along its steps."""
        lines = []
        for steps, curve in self.curves:
            recorded = curve[np.isfinite(curve)]
            if len(recorded) == 0:  # a filter whose ascent recorded no finite activation
                continue
            final = recorded[-1]
            lines.append((steps, curve / (final if abs(final) > 1e-12 else 1.0)))
        return Panel(
            "Filter ascent: activation / final",
            "step",
            "share",
            GUIDE_SHARE,
            kind="optimization",
            lines=lines,
            markers=False,
            reference="400-step ascent",
            note="The filter-ascent panel shows each filter's mean activation over its final "
            "value; a filter still rising at the end of its schedule is redone from a new start "
            "with one twice as long, and the higher result kept.",
        )


@dataclass
class LayerAscent:
    """One layer's filters: what they reached and the figure of their activation maps."""

    name: str
    filters: list[int]
    image: np.ndarray  # [F,H,W,C] the ascent images
    gain: list[list[float]]  # per filter: reached, start image, best explained image
    record: FigureRecord
    result: filters.AscentResult


def ascend_layer(run: Run, cfg: RunConfig, deadline: Deadline, spec: str, k: int) -> LayerAscent:
    name, _ = resolve_layer(run.model, spec)
    layer, acts, idx, result = climb(run, cfg, deadline, name, k)
    if result.stopped:
        run.cuts.append(
            f"{NAME}: ascent on {name} stopped after {int(result.steps.max())} of "
            f"{cfg.filter_steps} steps, the budget was spent"
        )
    image = result.pixels.permute(0, 2, 3, 1).cpu().numpy()
    record = activation_record(run, cfg, name, layer, acts, idx, image, result)
    return LayerAscent(name, idx, image, gains(result, acts, idx), record, result)


def stage_filters(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> FiltersResult:
    specs = filter_layer_names(run, cfg)
    layers: list[LayerAscent] = []
    for k, spec in enumerate(specs):
        if k and deadline.passed():
            run.cuts.append(f"{NAME}: layers {specs[k:]} not run, the budget was spent")
            break
        layers.append(ascend_layer(run, cfg, deadline, spec, k))
        bar.update()
    names = [a.name for a in layers]
    fig = feature_figures.filter_grid(
        names,
        [a.image for a in layers],
        [a.filters for a in layers],
        [a.gain for a in layers],
        "Filter visualization by gradient ascent"
        + (" from the image (course)" if cfg.conventions == COURSE else ""),
    )
    write_png(run, "q2_filters.png", fig)
    run.write_npz(
        "q2_filters.npz", **{f"{a.name.replace('.', '_')}_images": a.image for a in layers}
    )
    # filters still climbing that were redone; redos kept, as they climbed higher
    tried = sum(a.result.redone for a in layers)
    kept = sum(int((a.result.steps > cfg.filter_steps).sum()) for a in layers)
    spent = [a.result.work / (3 * cfg.filter_steps * len(a.filters)) for a in layers]
    reached = [(a.name, a.filters, a.gain) for a in layers]
    lead = FigureRecord(
        "q2_filters",
        SECTION,
        "Filter visualization by gradient ascent",
        f"{ascent_text(run, cfg, tried, kept)} {summary(reached)}.",
        "q2_filters.png",
        "q2_filters.npz",
        {
            "layers": names,
            "filters": [a.filters for a in layers],
            "steps": course.ASCENT_STEPS if cfg.conventions == COURSE else cfg.filter_steps,
            "redone": tried,
            "redone_kept": kept,
            "conventions": cfg.conventions,
            "tiles": {n: list(c.period) for n, c in tiled_canvases(run, names).items()},
        },
    )
    # The filters figure leads Q2, before the activation maps of the same filters.
    return FiltersResult(
        [lead, *(a.record for a in layers)],
        share=float(np.mean(spent)) if spent else None,
        curves=[c for a in layers for c in a.result.curves()],
        layers=[LayerDecision.made(a.name, a.filters, a.result.redo) for a in layers],
    )


def filters_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    return ascent_work(run, cfg, shares[NAME] if cfg.adaptive else 1 / 3)


STAGE = Stage(
    NAME,
    SECTION,
    stage_filters,
    filters_cost,
    units=lambda run, cfg: len(filter_layer_names(run, cfg)),
    cuts=(
        Cut(NAME, "two layers instead of four", {"filter_layer_count": 2}, rank=5),
        Cut(NAME, "one layer", {"filter_layer_count": 1}, rank=12),
        Cut(NAME, "40 ascent steps", {"filter_steps": 40}, rank=13),
    ),
    options=(
        "filter_layers",
        "filters",
        "filters_per_layer",
        "filter_layer_count",
        "filter_steps",
        "activation_images",
        "adaptive",
        "conventions",
    ),
    share=Share(expected=0.5),
    hooks=True,
    figures=lambda run: ("q2_filters", *map(activation_id, planned_layers(run))),
    undecided={DECISION: None},
    verify=(
        ArrayRule("q2_filters", "*_images", RANKED),
        ArrayRule("q2_activations_*", "ascent_image", RANKED),
        ArrayRule("q2_activations_*", "ascent_curve", ITERATED_VALUES),
    ),
)
