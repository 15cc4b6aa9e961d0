"""Q4: SmoothGrad of saliency, stopped per image once its two half-averages agree."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.context import Explain, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import Stability, StageResult
from hw5lib.stages.record import explained, number, samples_text, save_attribution
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import RANKED, ArrayRule

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

    def convergence(self) -> dict[str, dict]:
        return {
            METHOD: {
                "rule": f"rounds of {ROUND} samples, at least {ROUND}, until the split-half "
                f"predicted correlation with the exact expectation is >= {AGREEMENT}; "
                f"cap {self.cap}",
                "samples": self.samples,
                "agreement": self.rounded_trace(),
            }
        }

    def rounded_trace(self) -> list[list[float]]:
        """The agreement per round as the manifest records it (and the panel draws it)."""
        return [[round(v, 4) for v in row] for row in self.trace]

    def convergence_panel(self) -> Panel:
        trace = self.rounded_trace()
        lines = []
        if trace and np.isfinite(trace).any():  # matplotlib breaks lines at NaN
            rows = np.array(trace)  # (rounds, N)
            lines = [(ROUND * np.arange(1, len(rows) + 1), rows)]
        return Panel(
            "SmoothGrad: predicted agreement",
            "samples",
            "correlation",
            AGREEMENT,
            lines=lines,
            reference="200-sample SmoothGrad",
        )

    def stability(self) -> dict[str, Stability]:
        """The correlation of two noise seeds' maps, predicted from its own two half-sums
        (``attributions.split_half_agreement``): no second run needed."""
        value = None if self.agreement is None else float(self.agreement.mean() ** 2)
        return {
            METHOD: Stability(
                value,
                "SmoothGrad, the correlation of maps from two noise seeds predicted from its "
                "two half-sums (Spearman-Brown)",
            )
        }


def smoothgrad_of(
    run: Run,
    cfg: RunConfig,
    deadline: Deadline,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    counts: list[int] | None = None,
    *,
    stream: int = NOISE_STREAM,
    method: str = METHOD,
) -> attributions.Converged:
    """SmoothGrad of saliency with the run's settings: until converged (at most
    --smooth-samples), or exactly that many with --no-adaptive; in a replay of the explained
    images, each image's recorded count; with ``counts``, exactly those per image. ``stream``
    and ``method``: another noise stream, and the name its replayed counts are recorded under."""
    replayed = run.replayed(method, "samples", cfg.smooth_samples)
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
        generator=run.generator(stream),
        batch_size=cfg.batch_size,
        stop=deadline.passed,
        samples_per_image=torch.tensor(counts) if counts is not None else None,
    )


def explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    """SmoothGrad on the randomized model with each image's sample count (and so noise) of the
    trained maps, the same settings Adebayo et al. compare: a random model's gradients never
    converge, so "until converged" would always run it to the cap."""
    trained = run.find(SmoothGradResult)

    def sg(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        counts = trained.samples if trained is not None and len(trained.samples) == len(x) else None
        return smoothgrad_of(run, cfg, deadline, model, x, target, counts).value

    return sg


def stage_smoothgrad(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> SmoothGradResult:
    s = run.subject
    result = smoothgrad_of(run, cfg, deadline, run.gradients, s.x, s.target)
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


def samples_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    """Its gradients at the expected share of the cap (the randomized model's rerun spends the
    trained counts)."""
    return Work(backward=explained(run) * cfg.smooth_samples * shares[NAME])


STAGE = Stage(
    NAME,
    "Q4",
    stage_smoothgrad,
    lambda run, cfg, shares: samples_cost(run, cfg, shares) + Work(seconds=FIGURE_SECONDS),
    cuts=(Cut(NAME, "at most 20 samples", {"smooth_samples": 20}, rank=11),),
    options=("smooth_samples", "smooth_sigma", "adaptive", "batch_size"),
    methods=(
        Method(
            METHOD,
            explain,
            sampled=True,
            rerun_note="SmoothGrad with each image's sample count in the trained run",
            rerun_cost=samples_cost,
        ),
    ),
    share=Share(expected=0.6),
    figures=lambda run: ("q4_smoothgrad",),
    verify=(
        ArrayRule("q4_smoothgrad", "attribution", RANKED),
        ArrayRule("q4_smoothgrad", "map", RANKED),
    ),
)
