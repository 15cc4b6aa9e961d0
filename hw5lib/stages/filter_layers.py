"""Q2's layers and the ascent on each: which layers (asked for, the default ones, or a
replay's), the canvas each layer's ascent climbs (found once per run, in ``Run.memo``: the plan
prices it before the stage climbs), the work that costs, and the climb itself under the run's
conventions. The Q2 stage writes its figures from what ``climb`` returns."""

from __future__ import annotations

from torch import Tensor, nn

from hw5lib.config import COURSE, RunConfig
from hw5lib.errors import UserError
from hw5lib.methods import ascent_canvas, course, filters
from hw5lib.methods.filter_choice import LayerDecision, choose_filters
from hw5lib.model.layers import default_filter_layers, resolve_layer, same_activation_model
from hw5lib.stages.context import Run
from hw5lib.stages.costs import FIGURE_SECONDS, Deadline, Work
from hw5lib.stages.record import explained

# A step on a tiled canvas costs its view's share of the image's pixels plus this share of a
# whole-image step (work that does not shrink with the view: the optimizer, Python, launching
# each op), as measured on the demo model (bench/RESULTS.md).
STEP_OVERHEAD = 0.1
SECTION = "Q2"  # the report section of all Q2 figures
DECISION = "filters"  # manifest.json "decisions": each layer's filters and redos
CANVAS = "ascent canvas"  # Run.memo: each layer's canvas, found once (layer_canvas)
STREAM = 10  # random stream of the first layer's ascent; the k-th layer draws from STREAM + k


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


def tiled_canvases(run: Run, names: list[str]) -> dict[str, ascent_canvas.Canvas]:
    """The tiled canvases found so far of the layers ``names``, in the order found."""
    return {n: c for n, c in run.memo.all(CANVAS).items() if c.tiled and n in names}


def step_cost(canvas: ascent_canvas.Canvas) -> float:
    """One ascent step on ``canvas``, as a share of a step on the whole image."""
    return min(1.0, canvas.area + STEP_OVERHEAD) if canvas.tiled else 1.0


def ascent_work(run: Run, cfg: RunConfig, share: float) -> Work:
    """The Q2 stage's work, ``share`` being the expected share of its cap the ascent spends."""
    # Ascent runs the model only up to the layer: about half of it on average, on the layer's
    # canvas (step_cost). A filter still climbing is redone with twice the steps: 3 x steps at
    # the cap.
    names = [resolve_layer(run.model, spec)[0] for spec in filter_layer_names(run, cfg)]
    layers = len(names)
    per_layer = len(cfg.filters) or cfg.filters_per_layer
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


def climb(
    run: Run, cfg: RunConfig, deadline: Deadline, name: str, k: int
) -> tuple[nn.Module, Tensor, list[int], filters.AscentResult]:
    """The ascent on ``name``, the k-th Q2 layer, as the run's conventions make it: the layer,
    its activations on the explained images [N,F,h,w], its filters and what they reached; in
    a replay, with the recorded filters and redos."""
    # The BatchNorm-folded copy is faster and has the same activation at most layers.
    model = same_activation_model(run.model, run.grad, name)
    layer = resolve_layer(model, name)[1]
    acts = filters.layer_activations(model, layer, run.subject.x, batch_size=cfg.batch_size)
    replayed = replayed_layers(run)
    decided = replayed[k] if replayed else None  # the filters and redos a replay makes again
    idx = choose_filters(acts, name, decided, cfg.filters, cfg.filters_per_layer)
    if cfg.conventions == COURSE:
        swap = run.pre.swap_channels
        return layer, acts, idx, course.ascent_result(model, layer, idx, run.subject.x[0], swap)
    result = filters.filter_ascent(
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
    return layer, acts, idx, result
