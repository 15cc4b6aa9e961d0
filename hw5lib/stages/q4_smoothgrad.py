"""Q4: SmoothGrad of saliency, stopped per image once its two half-averages agree."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.methods import attributions
from hw5lib.run.budget import FIGURE_SECONDS, Cut, Work
from hw5lib.run.context import Run
from hw5lib.stages.record import (
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

NAME = "Q4 SmoothGrad"
METHOD = "SmoothGrad"
NOISE_STREAM = 30  # its random stream: the trust table's rerun draws the same noise
ROUND = 10  # samples per round; also the fewest it stops at
AGREEMENT = 0.98  # predicted correlation with the exact expectation at which it stops


@dataclass
class SmoothGradResult(StageResult):
    agreement: Tensor | None = None  # [N] predicted correlation with the exact expectation
    samples: list[int] = field(default_factory=list)
    trace: list[list[float]] = field(default_factory=list)  # per round, per image
    cap: int = 0

    def convergence(self) -> dict:
        return {
            "rule": f"rounds of {ROUND} samples, at least {ROUND}, until the split-half "
            f"predicted correlation with the exact expectation is >= {AGREEMENT}; cap {self.cap}",
            "samples": self.samples,
            "agreement": [[round(v, 4) for v in row] for row in self.trace],
        }


def smoothgrad_of(
    run: Run, model: nn.Module, x: Tensor, target: Tensor, counts: list[int] | None = None
) -> attributions.Converged:
    """SmoothGrad of saliency with the run's settings: until converged (at most
    --smooth-samples), or exactly that many with --no-adaptive; in a replay of the explained
    images, each image's recorded count; with ``counts``, exactly those per image."""
    cfg = run.cfg
    replayed = run.replayed(METHOD, "samples", cfg.smooth_samples)
    # the stage's own maps: the trust table's randomized model passes the trained counts
    same = replayed is not None and len(replayed) == len(x) and model is run.gradients
    counts = replayed if same else counts
    return attributions.smoothgrad_until_converged(
        attributions.saliency,
        model,
        x,
        target,
        max_samples=cfg.smooth_samples,
        min_samples=min(ROUND, cfg.smooth_samples) if cfg.adaptive else cfg.smooth_samples,
        round_samples=ROUND,
        agreement=AGREEMENT,
        sigma=cfg.smooth_sigma,
        generator=run.generator(NOISE_STREAM),
        batch_size=cfg.batch_size,
        stop=run.deadline.passed,
        samples_per_image=torch.tensor(counts) if counts is not None else None,
    )


def explain(run: Run) -> Explain:
    """SmoothGrad on the randomized model with each image's sample count (and so noise) of the
    trained maps, the same settings Adebayo et al. compare: a random model's gradients never
    converge, so "until converged" would always run it to the cap."""
    trained = run.find(SmoothGradResult)

    def sg(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        counts = trained.samples if trained is not None and len(trained.samples) == len(x) else None
        return smoothgrad_of(run, model, x, target, counts).value

    return sg


def stage_smoothgrad(run: Run, bar: tqdm) -> SmoothGradResult:
    cfg, s = run.cfg, run.subject
    result = smoothgrad_of(run, run.gradients, s.x, s.target)
    maps = result.value
    bar.update()
    record = save_attribution(
        run,
        "q4_smoothgrad",
        STAGE.section,
        "SmoothGrad",
        f"SmoothGrad (Smilkov et al., 2017): saliency averaged over {samples_text(result.used)} "
        f"copies of each image with Gaussian noise of std {cfg.smooth_sigma} x its value range"
        f" (predicted correlation with the exact expectation: min "
        f"{number(float(result.quality.min()), '.3f')}).",
        maps,
        params={
            "samples": result.used.tolist(),
            "cap": cfg.smooth_samples,
            "sigma": cfg.smooth_sigma,
        },
    )
    return SmoothGradResult(
        [record],
        {METHOD: maps.detach().cpu()},
        share=float(result.used.float().mean()) / cfg.smooth_samples,
        agreement=result.quality,
        samples=result.used.tolist(),
        trace=result.trace,
        cap=cfg.smooth_samples,
    )


STAGE = Stage(
    NAME,
    "Q4",
    stage_smoothgrad,
    lambda run, cfg, shares: Work(
        backward=explained(run) * cfg.smooth_samples * shares[NAME], seconds=FIGURE_SECONDS
    ),
    cuts=(Cut(NAME, "at most 20 samples", {"smooth_samples": 20}, rank=11),),
    options=("smooth_samples", "smooth_sigma", "adaptive", "batch_size"),
    methods=(Method(METHOD, explain, sampled=True),),
    share=Share(expected=0.6),
    figures=lambda run: ("q4_smoothgrad",),
)
