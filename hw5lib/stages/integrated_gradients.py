"""Q4: Integrated Gradients, Gauss-Legendre steps doubled until the completeness error is small."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import attributions, faithfulness
from ..budget import FIGURE_SECONDS, Cut, Work
from ..config import RunConfig
from ..context import Run
from ..errors import UserError
from .record import (
    Explain,
    Method,
    Share,
    Stage,
    StageResult,
    explained,
    number,
    samples_text,
    save_attribution,
)

NAME = "Q4 Integrated Gradients"
METHOD = "Integrated Gradients"
TOLERANCE = 0.01  # completeness error at which IG stops adding steps
FIRST_STEPS = 8  # doubled from here


@dataclass
class IntegratedGradientsResult(StageResult):
    final_steps: int = 0  # the most steps any image's estimate needed
    steps: list[int] = field(default_factory=list)  # of each image's final estimate
    first: int = FIRST_STEPS  # the steps of the first round, doubled from there
    gradients: list[int] = field(default_factory=list)  # evaluated per image
    trace: list[list[float]] = field(default_factory=list)  # completeness error per round
    cap: int = 0

    def convergence(self) -> dict:
        return {
            "rule": f"Gauss-Legendre steps {FIRST_STEPS}, {2 * FIRST_STEPS}, {4 * FIRST_STEPS}, "
            f"... until the completeness error is <= {TOLERANCE}; cap {self.cap}",
            "first_steps": self.first,
            "steps": self.steps,
            "gradients": self.gradients,
            "completeness_error": [[round(v, 5) for v in row] for row in self.trace],
        }


def first_steps(cfg: RunConfig) -> int:
    """IG's first step count, doubled until converged; the cap itself with --no-adaptive."""
    return min(FIRST_STEPS, cfg.ig_steps) if cfg.adaptive else cfg.ig_steps


def share_at_cap(cfg: RunConfig) -> float:
    """When nothing converges, the doublings (8, 16, 32, ... while within --ig-steps) evaluate
    the gradients of every round."""
    first = first_steps(cfg)
    rounds = [first * 2**k for k in range(32) if first * 2**k <= cfg.ig_steps]
    return sum(rounds) / cfg.ig_steps


def baseline(run: Run, kind: str) -> Tensor:
    x = run.subject.x
    if kind == "black":
        return run.to_input(torch.zeros_like(x.cpu()))
    if kind == "blur":
        return faithfulness.gaussian_blur(x)
    raise UserError(f"--ig-baseline must be 'black' or 'blur', not {kind!r}")


def integrated_gradients_of(
    run: Run, model: nn.Module, x: Tensor, target: Tensor
) -> attributions.Converged:
    """IG with the run's baseline: steps doubled until converged (at most --ig-steps), or
    exactly --ig-steps with --no-adaptive; in a replay of the explained images, doubled from
    the recorded first steps to each image's recorded steps."""
    cfg = run.cfg
    replayed = run.replayed(METHOD, "steps", cfg.ig_steps)
    # the stage's own maps: the trust table's randomized model decides its counts anew
    same = replayed is not None and len(replayed) == len(x) and model is run.gradients
    return attributions.integrated_gradients_until_converged(
        model,
        x,
        target,
        baseline=baseline(run, cfg.ig_baseline),
        max_steps=cfg.ig_steps,
        first_steps=round_one(run),
        tolerance=TOLERANCE,
        batch_size=cfg.batch_size,
        stop=run.deadline.passed,
        steps_per_image=torch.tensor(replayed) if same else None,
    )


def round_one(run: Run) -> int:
    """The steps of IG's first round: the replayed run's (no more than --ig-steps when the
    replay was cut), else ``first_steps``."""
    first = run.replay.recorded(METHOD, "first_steps") if run.replay else None
    if first is None:
        return first_steps(run.cfg)
    return min(int(first), run.cfg.ig_steps) if run.replay_cut else int(first)


def explain(run: Run) -> Explain:
    """IG on the randomized model with the most steps any trained map needed: a random model's
    gradients never converge, and running it to the cap buys precision the rank comparison does
    not need."""
    trained = run.find(IntegratedGradientsResult)

    def ig(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        if trained is None:
            return attributions.channel_sum(integrated_gradients_of(run, model, x, target).value)
        return attributions.channel_sum(
            attributions.integrated_gradients(
                model,
                x,
                target,
                baseline=baseline(run, run.cfg.ig_baseline),
                steps=trained.final_steps,
                batch_size=run.cfg.batch_size,
            )
        )

    return ig


def stage_integrated_gradients(run: Run, bar: tqdm) -> IntegratedGradientsResult:
    cfg, s = run.cfg, run.subject
    result = integrated_gradients_of(run, run.gradients, s.x, s.target)
    raw, err = result.value, result.quality
    bar.update()
    maps = attributions.channel_sum(raw)
    record = save_attribution(
        run,
        "q4_integrated_gradients",
        STAGE.section,
        f"Integrated Gradients ({cfg.ig_baseline} baseline)",
        f"Integrated Gradients (Sundararajan et al., 2017) from a {cfg.ig_baseline} baseline, "
        f"Gauss-Legendre steps doubled from {FIRST_STEPS} until the completeness error is at "
        f"most {TOLERANCE:.0%} ({samples_text(result.used)} gradients per image), summed over "
        f"channels. Completeness error "
        f"|sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|: median {number(float(err.median()), '.4f')}, "
        f"max {number(float(err.max()), '.4f')}.",
        maps,
        signed=True,
        raw=raw,
        params={
            "baseline": cfg.ig_baseline,
            "gradients": result.used.tolist(),
            "cap": cfg.ig_steps,
        },
    )
    return IntegratedGradientsResult(
        [record],
        {METHOD: maps.detach().cpu()},
        share=float(result.used.float().mean()) / cfg.ig_steps,
        final_steps=int(result.final.max()),
        steps=result.final.tolist(),
        first=round_one(run),
        gradients=result.used.tolist(),
        trace=result.trace,
        cap=cfg.ig_steps,
    )


STAGE = Stage(
    NAME,
    "Q4",
    stage_integrated_gradients,
    lambda run, cfg, shares: Work(
        backward=explained(run) * cfg.ig_steps * shares[NAME],
        forward=4 * explained(run),
        seconds=FIGURE_SECONDS,
    ),
    cuts=(Cut(NAME, "at most 16 steps", {"ig_steps": 16}, rank=10),),
    options=("ig_steps", "ig_baseline", "adaptive", "batch_size"),
    methods=(Method(METHOD, explain, sampled=True),),
    share=Share(expected=0.8, at_cap=share_at_cap),
    figures=lambda run: ("q4_integrated_gradients",),
)
