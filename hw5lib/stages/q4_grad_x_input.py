"""Q4: Gradient x Input, summed over channels (signed)."""

from __future__ import annotations

from tqdm import tqdm

from hw5lib.methods import attributions
from hw5lib.run.budget import FIGURE_SECONDS, Work
from hw5lib.run.context import Run
from hw5lib.stages.record import (
    Explain,
    FromGradient,
    Method,
    Stage,
    StageResult,
    explained,
    save_attribution,
)

NAME = "Q4 Grad x Input"
METHOD = "Gradient x Input"


def explain(run: Run) -> Explain:
    return lambda m, x, t: attributions.channel_sum(
        attributions.grad_x_input(m, x, t, batch_size=run.cfg.batch_size)
    )


def from_gradient(run: Run) -> FromGradient:
    """``explain``'s map from the input gradient."""
    return lambda grad, x: attributions.channel_sum(grad * x)


def stage_grad_x_input(run: Run, bar: tqdm) -> StageResult:
    s = run.subject
    raw = attributions.grad_x_input(run.gradients, s.x, s.target, batch_size=run.cfg.batch_size)
    bar.update()
    maps = attributions.channel_sum(raw)
    record = save_attribution(
        run,
        "q4_grad_x_input",
        STAGE.section,
        "Gradient x Input",
        "Gradient x Input (Shrikumar et al., 2016) summed over channels: red pixels raise the "
        "class score to first order, blue ones lower it.",
        maps,
        signed=True,
        raw=raw,
    )
    return StageResult([record], {METHOD: maps.detach().cpu()})


STAGE = Stage(
    NAME,
    "Q4",
    stage_grad_x_input,
    lambda run, cfg, shares: Work(backward=explained(run), seconds=FIGURE_SECONDS),
    options=("batch_size",),
    methods=(Method(METHOD, explain, from_gradient=from_gradient),),
    figures=lambda run: ("q4_grad_x_input",),
)
