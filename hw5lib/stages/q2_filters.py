"""Q2: filter visualization by gradient ascent, and those filters' activation maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.errors import UserError
from hw5lib.methods import ascent_canvas, course, filters
from hw5lib.model.layers import default_filter_layers, resolve_layer, same_activation_model
from hw5lib.report import feature_figures
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.context import Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.record import explained, number, write_png
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import ITERATED_VALUES, RANKED, ArrayRule

NAME = "Q2 filters"
SECTION = "Q2"
STREAM = 10  # random stream of the first layer's ascent; the k-th layer draws from STREAM + k
# A step on a tiled canvas costs its view's share of the image's pixels plus this share of a
# whole-image step (work that does not shrink with the view: the optimizer, Python, launching
# each op), as measured on the demo model (bench/RESULTS.md).
STEP_OVERHEAD = 0.1
DECISION = "filters"  # manifest.json "decisions": each layer's filters and redos
CANVAS = "ascent canvas"  # Run.memo: each layer's canvas, found once (layer_canvas)
GUIDE_SHARE = 0.9  # the convergence panel's dashed line: 90% of the final activation


@dataclass(frozen=True)
class LayerDecision:
    """One Q2 layer as the run made it: its filters, and by filter index those redone because
    still climbing and those whose redo was kept."""

    layer: str
    filters: tuple[int, ...]
    redone: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()

    def redo(self) -> filters.Redo:
        """The redone and kept filters by position, as ``filters.filter_ascent`` takes them."""
        at = {f: i for i, f in enumerate(self.filters)}
        return filters.Redo(tuple(at[f] for f in self.redone), tuple(at[f] for f in self.kept))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerDecision:
        return cls(
            str(d["layer"]),
            tuple(map(int, d["filters"])),
            tuple(map(int, d["redone"])),
            tuple(map(int, d["kept"])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "filters": list(self.filters),
            "redone": list(self.redone),
            "kept": list(self.kept),
        }


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


def filter_layer_names(run: Run, cfg: RunConfig) -> list[str]:
    """--filter-layers, else the default layers; in a replay the replayed run's (no more than
    the planned count when the replay was cut)."""
    replayed = replayed_layers(run)
    if replayed is not None:
        layers = [d.layer for d in replayed]
        return layers[: cfg.filter_layer_count] if run.replay_cut else layers
    return list(cfg.filter_layers) or default_filter_layers(
        run.model, cfg.filter_layer_count, (run.pre.channels, *run.pre.size)
    )


def replayed_layers(run: Run) -> tuple[LayerDecision, ...] | None:
    recorded = run.replay.decision(DECISION) if run.replay else None
    if recorded is None:
        return None
    try:
        return tuple(LayerDecision.from_dict(d) for d in recorded)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"--replay {run.replay.name}: malformed Q2 decisions ({err!r})") from None


def planned_layers(run: Run) -> list[str]:
    """The Q2 layers by name (``--filter-layers 15`` is ``cnn.15``), as the figure ids use."""
    return [resolve_layer(run.model, spec)[0] for spec in filter_layer_names(run, run.cfg)]


def layer_canvas(run: Run, name: str) -> ascent_canvas.Canvas:
    """The canvas the ascent on layer ``name`` climbs (``ascent_canvas.ascent_canvas``), found once
    per run: the plan prices it before the stage climbs on it."""

    def find() -> ascent_canvas.Canvas:
        model = same_activation_model(run.model, run.grad, name)
        layer = resolve_layer(model, name)[1]
        shape = (run.pre.channels, *run.pre.size)
        return ascent_canvas.ascent_canvas(model, layer, shape, run.to_input)

    return run.memo.once(CANVAS, name, find)


def step_cost(canvas: ascent_canvas.Canvas) -> float:
    """One ascent step on ``canvas``, as a share of a step on the whole image."""
    return min(1.0, canvas.area + STEP_OVERHEAD) if canvas.tiled else 1.0


def activation_id(layer: str) -> str:
    return f"q2_activations_{layer.replace('.', '_')}"  # cnn.2 -> q2_activations_cnn_2


def activation_record(
    run: Run,
    cfg: RunConfig,
    name: str,
    layer: nn.Module,
    acts: Tensor,
    idx: list[int],
    ascent: np.ndarray,
    result: filters.AscentResult,
) -> FigureRecord:
    """The activation maps of one layer's chosen filters on the first explained images."""
    s = run.subject
    rows = min(cfg.activation_images, len(s.paths))
    fid = activation_id(name)
    fig = feature_figures.activation_grid(
        s.pixels[:rows],
        acts[:rows, idx].relu().cpu().numpy(),
        idx,
        s.titles(run.classes)[:rows],
        f"Activation maps of {name} filters {idx} on real images",
    )
    write_png(run, f"{fid}.png", fig)
    run.write_npz(
        f"{fid}.npz",
        input=s.x[:rows].cpu().numpy(),
        filters=np.array(idx),
        activation=acts[:rows, idx].cpu().numpy(),
        ascent_image=ascent,
        ascent_curve=result.activation.cpu().numpy(),
        ascent_steps=result.recorded.numpy(),
    )
    means = ", ".join(number(v, ".3f") for v in acts[:, idx].mean(dim=(0, 2, 3)).tolist())
    return FigureRecord(
        fid,
        SECTION,
        f"Activation maps of layer {name}",
        f"Output channels {idx} of {name} ({type(layer).__name__}) on {rows} images; each "
        f"filter's maps share one color scale. Mean activation per filter over the explained "
        f"images: {means}.",
        f"{fid}.png",
        f"{fid}.npz",
        {"layer": name, "filters": idx},
    )


def ascend_layer(run: Run, cfg: RunConfig, deadline: Deadline, spec: str, k: int) -> LayerAscent:
    s = run.subject
    name, _ = resolve_layer(run.model, spec)
    # The BatchNorm-folded copy is faster and has the same activation at most layers.
    model = same_activation_model(run.model, run.grad, name)
    layer = resolve_layer(model, name)[1]
    acts = filters.layer_activations(model, layer, s.x, batch_size=cfg.batch_size)
    replayed = replayed_layers(run)
    decided = replayed[k] if replayed else None  # the filters and redos a replay makes again
    idx = (
        list(decided.filters)
        if decided
        else list(cfg.filters) or filters.most_active_filters(acts, cfg.filters_per_layer)
    )
    bad = [f for f in idx if f >= acts.shape[1]]
    if bad:
        raise UserError(f"layer {name} has {acts.shape[1]} filters; no filter {bad[0]}")
    result = (
        course_ascent(run, model, layer, idx)
        if cfg.conventions == COURSE
        else filters.filter_ascent(
            model,
            layer,
            idx,
            shape=(run.pre.channels, *run.pre.size),
            to_input=run.to_input,
            steps=cfg.filter_steps,
            canvas=layer_canvas(run, name),
            generator=run.generator(STREAM + k),
            redo_climbing=cfg.adaptive,
            stop=deadline.passed,
            replay=decided.redo() if decided else None,
        )
    )
    if result.stopped:
        run.cuts.append(
            f"{NAME}: ascent on {name} stopped after {int(result.steps.max())} of "
            f"{cfg.filter_steps} steps, the budget was spent"
        )
    # Reached vs start image vs the best explained real image, per filter.
    real = acts[:, idx].mean(dim=(2, 3)).amax(dim=0).cpu()
    gain = torch.stack([result.final.cpu(), result.activation[0].cpu(), real], dim=1)
    image = result.pixels.permute(0, 2, 3, 1).cpu().numpy()
    record = activation_record(run, cfg, name, layer, acts, idx, image, result)
    return LayerAscent(name, idx, image, gain.tolist(), record, result)


def layer_decision(ascent: LayerAscent) -> LayerDecision:
    """What the ascent decided on this layer, by filter index, for the manifest."""
    redo, idx = ascent.result.redo, ascent.filters
    return LayerDecision(
        ascent.name,
        tuple(idx),
        tuple(idx[r] for r in redo.rows),
        tuple(idx[r] for r in redo.kept),
    )


def course_ascent(
    run: Run, model: nn.Module, layer: nn.Module, idx: list[int]
) -> filters.AscentResult:
    """The course's ascent from the first explained image, as an ``AscentResult``: each image
    min-max scaled over its values for display, as the sample code shows it."""
    images, (start, end) = course.filter_ascent(model, layer, idx, run.subject.x[0])
    shown = course.min_max(run.pre.swap_channels(images.cpu()))
    steps = course.ASCENT_STEPS
    return filters.AscentResult(
        shown,
        torch.stack([start, end]).cpu(),
        torch.tensor([0, steps]),
        torch.full((len(idx),), steps),
        work=len(idx) * steps,
    )


def ascent_text(run: Run, cfg: RunConfig, tried: int, kept: int) -> str:
    """How the figure's images were made, for its caption."""
    if cfg.conventions == COURSE:
        return (
            f"As the course's sample code (--conventions course): each image starts from the "
            f"first explained image ({run.subject.paths[0].name}) and climbs one filter's summed "
            f"activation for {course.ASCENT_STEPS} Adam steps (lr {course.ASCENT_LR:g}) on the "
            f"model input itself, with no regularizer, shown min-max scaled; one row per layer."
        )
    return (
        f"Each image starts from near-gray noise and climbs one filter's mean activation for "
        f"{cfg.filter_steps} AdamW steps on a Fourier-parameterized image with random jitter, "
        f"rotation and scale (Olah et al., 2017), one row per layer; "
        f"{redo_note(tried, kept, cfg.filter_steps)}.{tile_note(run)}"
    )


def tile_note(run: Run) -> str:
    """Which layers climbed a periodic tile, for the caption."""
    tiled = {n: c for n, c in run.memo.all(CANVAS).items() if c.tiled and n in planned_layers(run)}
    if not tiled:
        return ""
    sides = ", ".join(f"{n} {c.period[0]}x{c.period[1]}" for n, c in tiled.items())
    return (
        f" Where a layer's units see a small part of the image, its images climb a periodic "
        f"tile (at least the receptive field, found by gradient, and a quarter of the image "
        f"side) seen repeated, and are shown repeated without seams to the full size: {sides}."
    )


def summary(layers: list[LayerAscent]) -> str:
    return "; ".join(
        f"{a.name}: filters {a.filters} reach mean activation "
        + ", ".join(number(end) for end, _, _ in a.gain)
        + " (start image "
        + ", ".join(number(start) for _, start, _ in a.gain)
        + "; best real image "
        + ", ".join(number(best) for _, _, best in a.gain)
        + ")"
        for a in layers
    )


def redo_note(tried: int, kept: int, steps: int) -> str:
    if not tried:
        return "every filter had stopped climbing by the end"
    return (
        f"{tried} {'filter' if tried == 1 else 'filters'} still climbing at the end "
        f"{'was' if tried == 1 else 'were'} redone from a new start with "
        f"{2 * steps} steps; the {kept} that climbed higher are shown"
    )


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
    lead = FigureRecord(
        "q2_filters",
        SECTION,
        "Filter visualization by gradient ascent",
        f"{ascent_text(run, cfg, tried, kept)} {summary(layers)}.",
        "q2_filters.png",
        "q2_filters.npz",
        {
            "layers": names,
            "filters": [a.filters for a in layers],
            "steps": course.ASCENT_STEPS if cfg.conventions == COURSE else cfg.filter_steps,
            "redone": tried,
            "redone_kept": kept,
            "conventions": cfg.conventions,
            "tiles": {
                n: list(c.period) for n, c in run.memo.all(CANVAS).items() if c.tiled and n in names
            },
        },
    )
    # The filters figure leads Q2, before the activation maps of the same filters.
    return FiltersResult(
        [lead, *(a.record for a in layers)],
        share=float(np.mean(spent)) if spent else None,
        curves=[c for a in layers for c in a.result.curves()],
        layers=[layer_decision(a) for a in layers],
    )


def filters_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    # Ascent runs the model only up to the layer: about half of it on average, on the layer's
    # canvas (step_cost). A filter still climbing is redone with twice the steps: 3 x steps at
    # the cap.
    names = [resolve_layer(run.model, spec)[0] for spec in filter_layer_names(run, cfg)]
    layers = len(names)
    per_layer = len(cfg.filters) or cfg.filters_per_layer
    share = shares[NAME] if cfg.adaptive else 1 / 3
    steps = course.ASCENT_STEPS if cfg.conventions == COURSE else 3 * cfg.filter_steps * share
    area = (
        layers
        if cfg.conventions == COURSE
        else sum(step_cost(layer_canvas(run, name)) for name in names)
    )
    return Work(
        backward=0.5 * area * per_layer * steps,
        forward=explained(run) * layers,
        seconds=FIGURE_SECONDS * (1 + layers),
    )


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
