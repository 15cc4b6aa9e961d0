"""Q4: Gradient x Input, summed over channels (signed)."""

from __future__ import annotations

from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions
from hw5lib.stages.context import Explain, FromGradient, Method, Run
from hw5lib.stages.costs import FIGURE_SECONDS, Deadline, Work
from hw5lib.stages.protocol import StageResult
from hw5lib.stages.record import explained, save_attribution
from hw5lib.stages.stage import Stage

NAME = "Q4 Grad x Input"
METHOD = "Gradient x Input"


def explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    return lambda m, x, t: attributions.channel_sum(
        attributions.grad_x_input(m, x, t, batch_size=cfg.batch_size)
    )


def from_gradient(cfg: RunConfig) -> FromGradient:
    """``explain``'s map from the input gradient."""
    return lambda grad, x: attributions.channel_sum(grad * x)


def stage_grad_x_input(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> StageResult:
    s = run.subject
    raw = attributions.grad_x_input(run.gradients, s.x, s.target, batch_size=cfg.batch_size)
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
