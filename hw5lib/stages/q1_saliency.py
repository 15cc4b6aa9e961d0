"""Q1: vanilla gradient saliency of the target logit, or the course's of the loss."""

from __future__ import annotations

from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import attributions, course
from hw5lib.stages.context import Explain, FromGradient, Method, Run
from hw5lib.stages.costs import FIGURE_SECONDS, Deadline, Work
from hw5lib.stages.protocol import StageResult
from hw5lib.stages.record import explained, save_attribution
from hw5lib.stages.stage import Stage

NAME = "Q1 saliency"
METHOD = "Saliency"


def explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    """The run's saliency as an [N,H,W] map (the course's: its max over channels)."""
    size = cfg.batch_size
    if cfg.conventions == COURSE:
        return lambda m, x, t: course.loss_saliency(m, x, t, batch_size=size).amax(dim=1)
    return lambda m, x, t: attributions.saliency(m, x, t, batch_size=size)


def from_gradient(cfg: RunConfig) -> FromGradient | None:
    """``explain``'s map from the input gradient; None for the course's, of the loss."""
    return None if cfg.conventions == COURSE else lambda grad, x: grad.abs().amax(dim=1)


def stage_saliency(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> StageResult:
    s = run.subject
    if cfg.conventions == COURSE:
        raw = course.loss_saliency(run.gradients, s.x, s.target, batch_size=cfg.batch_size)
        maps = raw.amax(dim=1)
        shown = run.pre.swap_channels(raw.cpu()).permute(0, 2, 3, 1)
        title = "Saliency maps: |d loss / d pixel| per channel (course)"
        caption = (
            f"Saliency as the course's sample code defines it, for {len(s.paths)} images: "
            "|d cross-entropy loss of the target class / d pixel| per color channel, min-max "
            "scaled over each image and shown as a color image (--conventions course). The "
            "trust table and the mask share use its max over channels."
        )
    else:
        raw, shown = None, None
        maps = explain(run, cfg, deadline)(run.gradients, s.x, s.target)
        title = "Saliency maps: |d score / d pixel|"
        caption = (
            f"Vanilla gradient saliency (Simonyan et al., 2014) of the target class logit for "
            f"{len(s.paths)} images, max over color channels, each map scaled to its own range."
        )
    bar.update()
    record = save_attribution(
        run,
        "q1_saliency",
        STAGE.section,
        title,
        caption,
        maps,
        raw=raw,
        shown=shown,
        params={"conventions": cfg.conventions},
    )
    return StageResult([record], {METHOD: maps.detach().cpu()})


STAGE = Stage(
    NAME,
    "Q1",
    stage_saliency,
    lambda run, cfg, shares: Work(backward=explained(run), seconds=FIGURE_SECONDS),
    options=("batch_size", "conventions"),
    methods=(Method(METHOD, explain, from_gradient=from_gradient),),
    figures=lambda run: ("q1_saliency",),
)
