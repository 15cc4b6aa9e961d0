"""Q1: vanilla gradient saliency of the target logit."""

from __future__ import annotations

from tqdm import tqdm

from .. import attributions
from ..budget import FIGURE_SECONDS, Work
from ..context import Run
from .record import Explain, Method, Stage, StageResult, explained, save_attribution

NAME = "Q1 saliency"
METHOD = "Saliency"


def explain(run: Run) -> Explain:
    return lambda m, x, t: attributions.saliency(m, x, t, batch_size=run.cfg.batch_size)


def stage_saliency(run: Run, bar: tqdm) -> StageResult:
    s = run.subject
    maps = explain(run)(run.gradients, s.x, s.target)
    bar.update()
    record = save_attribution(
        run,
        "q1_saliency",
        STAGE.section,
        "Saliency maps: |d score / d pixel|",
        f"Vanilla gradient saliency (Simonyan et al., 2014) of the target class logit for "
        f"{len(s.paths)} images, max over color channels, each map scaled to its own range.",
        maps,
    )
    return StageResult([record], {METHOD: maps.detach().cpu()})


STAGE = Stage(
    NAME,
    "Q1",
    stage_saliency,
    lambda run, cfg, shares: Work(backward=explained(run), seconds=FIGURE_SECONDS),
    options=("batch_size",),
    methods=(Method(METHOD, explain),),
    figures=lambda run: ("q1_saliency",),
)
