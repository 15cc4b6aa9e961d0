"""Q4: DeepDream on a middle conv block of the first explained images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import dream, filters
from hw5lib.model.layers import default_filter_layers, resolve_layer
from hw5lib.report import feature_figures
from hw5lib.stages.context import Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.record import explained, number, write_png
from hw5lib.stages.stage import Stage
from hw5lib.tolerances import RANKED, ArrayRule

NAME = "Q4 DeepDream"
STREAM = 40  # its random stream (jitter)
OCTAVES, OCTAVE_SCALE, STEPS = 3, 1.4, 20  # per octave; the cost prices the same schedule
MAX_CHANGE = 0.3  # no pixel moves further than this from the original
DECISION = "dream_steps"  # manifest.json "decisions": the steps a replay takes again


@dataclass
class DreamResult(StageResult):
    steps: int = 0  # ascent steps taken over all octaves (fewer than all: the deadline)

    def decisions(self) -> dict[str, Any]:
        return {DECISION: self.steps}


@dataclass
class StepLimit:
    """deep_dream's ``stop``: true at the deadline, or once a replayed run's count of steps is
    taken; counts the steps it lets through. Once true it stays true, so the count alone says
    which steps of which octave ran."""

    deadline: Callable[[], bool]
    limit: int | None = None
    taken: int = 0
    late: bool = False  # the deadline stopped it

    def __call__(self) -> bool:
        if self.limit is not None and self.taken >= self.limit:
            return True
        self.late = self.late or self.deadline()
        if self.late:
            return True
        self.taken += 1
        return False


def stage_dream(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> DreamResult:
    s = run.subject
    candidates = default_filter_layers(run.model, input_shape=(run.pre.channels, *run.pre.size))
    layer = cfg.dream_layer or candidates[len(candidates) // 2]
    name, module = resolve_layer(run.model, layer)
    n = min(cfg.dream_images, len(s.paths))
    replayed = run.replay.decision(DECISION) if run.replay else None
    limit = StepLimit(deadline.passed, None if replayed is None else int(replayed))
    out = dream.deep_dream(
        run.model,
        s.x[:n],
        module,
        steps=STEPS,
        octaves=OCTAVES,
        octave_scale=OCTAVE_SCALE,
        max_change=MAX_CHANGE,
        generator=run.generator(STREAM),
        stop=limit,
    )
    bar.update()
    if limit.late:
        run.cuts.append(f"{NAME}: stopped before its last step, the budget was spent")
    elif limit.taken < OCTAVES * STEPS:
        run.cuts.append(
            f"{NAME}: stopped after {limit.taken} of {OCTAVES * STEPS} steps, as in the "
            "replayed run"
        )
    before = filters.layer_activations(run.model, module, s.x[:n]).pow(2).mean().item()
    after = filters.layer_activations(run.model, module, out).pow(2).mean().item()
    dreamt = run.pre.denormalize(out).permute(0, 2, 3, 1).numpy()
    fig = feature_figures.before_after(
        s.pixels[:n], dreamt, s.titles(run.classes)[:n], f"DeepDream on {name}"
    )
    write_png(run, "q4_deepdream.png", fig)
    run.write_npz("q4_deepdream.npz", input=s.x[:n].cpu().numpy(), dream=out.cpu().numpy())
    record = FigureRecord(
        "q4_deepdream",
        STAGE.section,
        f"DeepDream on {name}",
        f"DeepDream (Mordvintsev et al., 2015): gradient ascent on the image to amplify the "
        f"mean square activation of {name}, over {OCTAVES} octaves with jitter, each pixel kept "
        f"within {MAX_CHANGE} of the original. The layer's mean square activation rose from {number(before, '.3f')} "
        f"to {number(after, '.3f')}.",
        "q4_deepdream.png",
        "q4_deepdream.npz",
        {"layer": name},
    )
    return DreamResult([record], steps=limit.taken)


def dream_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    octave_area = sum(OCTAVE_SCALE ** (-2 * k) for k in range(OCTAVES))
    images = min(cfg.dream_images, explained(run))
    return Work(backward=images * STEPS * octave_area, forward=2 * images, seconds=FIGURE_SECONDS)


STAGE = Stage(
    NAME,
    "Q4",
    stage_dream,
    dream_cost,
    cuts=(
        Cut(NAME, "one image instead of three", {"dream_images": 1}, rank=3),
        Cut(NAME, "DeepDream not run", {"skip": True}, rank=8),
    ),
    options=("dream_layer", "dream_images"),
    undecided={DECISION: None},
    verify=(ArrayRule("q4_deepdream", "dream", RANKED, minus="input"),),
    hooks=True,
    figures=lambda run: ("q4_deepdream",),
)
