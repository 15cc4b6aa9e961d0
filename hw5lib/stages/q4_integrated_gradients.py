"""Q4: Integrated Gradients on an adaptive subdivision of the path, refined where its exact
per-cell error is largest until the completeness error is small. How the run estimates it
(baseline, stopping rule, a replay's splits) is ``ig_estimate``; this module records and draws
it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions, integrated_gradients
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages import ig_estimate
from hw5lib.stages.context import Explain, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import StageResult
from hw5lib.stages.record import explained, number, samples_text, save_attribution
from hw5lib.stages.stage import Share, Stage

NAME = "Q4 Integrated Gradients"
RULE = (
    "trapezoid rule on inner cells, midpoint rule on the two end cells (the baseline and the "
    "image themselves are never sampled); {first} equal cells first, then each round halves "
    "the worse half of an image's cells by their exact error (the score change across a cell "
    "is known from its ends), every gradient kept"
)


@dataclass
class IntegratedGradientsResult(StageResult):
    final_steps: int = 0  # the most gradients any image's estimate needed
    steps: list[int] = field(default_factory=list)  # gradients of each image's estimate
    first: int = ig_estimate.FIRST_CELLS  # the cells of the first round
    gradients: list[int] = field(default_factory=list)  # evaluated per image (= steps)
    trace: list[list[float]] = field(default_factory=list)  # completeness error per round
    counts: list[list[int]] = field(default_factory=list)  # gradients per round, per image
    splits: list[list[list[float]]] = field(default_factory=list)  # edges added per round
    conditioning: list[float] = field(default_factory=list)  # path variation / net change
    tolerance: float = ig_estimate.TOLERANCE
    cap: int = 0

    def convergence(self) -> dict[str, dict]:
        return {ig_estimate.METHOD: self.record()}

    def record(self) -> dict:
        until = f"the completeness error is <= {self.tolerance}; " if self.tolerance else ""
        return {
            "rule": f"{RULE.format(first=self.first)}, until {until}cap {self.cap} gradients",
            "first_cells": self.first,
            "steps": self.steps,
            "gradients": self.gradients,
            # the edges each round added (JSON keeps floats exactly): a replay makes them again
            "splits": self.splits,
            "gradients_per_round": self.counts,
            # >> 1: the score rises and falls along the path far more than it changes overall,
            # and the relative error measures the quadrature against a small difference
            "conditioning": [round(v, 3) for v in self.conditioning],
            "completeness_error": [[round(v, 5) for v in row] for row in self.trace],
        }

    def convergence_panel(self) -> Panel:
        """The completeness error over the gradients each image had spent, as recorded."""
        trace = self.record()["completeness_error"]
        lines = []
        if trace and np.isfinite(trace).any():
            rows = np.array(trace, dtype=float)
            rows[~np.isfinite(rows)] = np.nan  # an inf would stretch the log axis to overflow
            steps = np.array(self.counts, dtype=float).reshape(rows.shape)
            lines = [(steps, np.clip(rows, 1e-6, None))]
        return Panel(
            "IG: completeness error",
            "gradients",
            "error",
            ig_estimate.TOLERANCE,
            lines=lines,
            log=True,
            reference="300-step IG",
        )


def share_at_cap(cfg: RunConfig) -> float:
    """Rounds keep every gradient: an image that never converges evaluates exactly the cap."""
    return 1.0


def explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    """IG on the randomized model by the same rule, capped at the most gradients any trained
    map needed: the rank comparison needs no more precision than the trained maps have."""
    trained = run.find(IntegratedGradientsResult)

    def ig(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        cap = trained.final_steps if trained is not None else None
        return attributions.channel_sum(
            ig_estimate.integrated_gradients_of(run, cfg, deadline, model, x, target, cap).value
        )

    return ig


def stage_integrated_gradients(
    run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm
) -> IntegratedGradientsResult:
    s = run.subject
    result = ig_estimate.integrated_gradients_of(run, cfg, deadline, run.gradients, s.x, s.target)
    raw, err = result.value, result.quality
    bar.update()
    maps = attributions.channel_sum(raw)
    record = save_attribution(
        run,
        "q4_integrated_gradients",
        STAGE.section,
        f"Integrated Gradients ({cfg.ig_baseline} baseline)",
        f"Integrated Gradients (Sundararajan et al., 2017) from a {cfg.ig_baseline} baseline, "
        f"the path integral on an adaptive subdivision refined where its exact per-cell error "
        f"is largest, {until(cfg)} ({samples_text(result.used)} gradients per image), summed "
        f"over channels. Completeness error "
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
        {ig_estimate.METHOD: maps.detach().cpu()},
        share=float(result.used.float().mean()) / cfg.ig_steps,
        final_steps=int(result.final.max()),
        steps=result.final.tolist(),
        first=integrated_gradients.first_cells(cfg.ig_steps, ig_estimate.FIRST_CELLS),
        gradients=result.used.tolist(),
        trace=result.trace,
        counts=result.counts,
        splits=result.splits,
        conditioning=[] if result.conditioning is None else result.conditioning.tolist(),
        tolerance=ig_estimate.tolerance(cfg),
        cap=cfg.ig_steps,
    )


def until(cfg: RunConfig) -> str:
    """The caption's stopping rule."""
    if not cfg.adaptive:
        return f"to {cfg.ig_steps} gradients"
    return (
        f"until the completeness error is at most {ig_estimate.TOLERANCE:.0%} or "
        f"{cfg.ig_steps} gradients"
    )


def rerun_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    """The randomized model's IG, capped at the most gradients a trained map needed."""
    trained = run.find(IntegratedGradientsResult)
    return Work(backward=explained(run) * (trained.final_steps if trained else cfg.ig_steps))


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
    methods=(
        Method(
            ig_estimate.METHOD,
            explain,
            sampled=True,
            rerun_note="Integrated Gradients with the most steps a trained map needed",
            rerun_cost=rerun_cost,
        ),
    ),
    # measured: 9.6 of 32 gradients on the sample set, 10.3 on real photos (full-size HW3)
    share=Share(expected=0.4, at_cap=share_at_cap),
    figures=lambda run: ("q4_integrated_gradients",),
)
