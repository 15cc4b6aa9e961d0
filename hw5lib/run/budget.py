"""Plan a report run to a time budget (``--budget SECONDS``).

At the start the model's own speed is measured: images per second through the inference model
(forward only, as LIME, deletion/insertion and the confusion matrix use it) and through a
forward plus input-gradient backward (saliency, SmoothGrad, IG, CAMs, filter ascent). Each stage
states its work in those units, so one measurement prices the whole run on any machine.

Before every stage the remaining stages are priced against the time left. If they do not fit,
cuts are applied in ``CUTS`` order, cheapest to lose first (a cross-check before a figure, a
smaller sample before a missing method), until they do; the stage then runs with the cut
settings, and the cuts are listed in the manifest and the report. Re-planning at every stage
means that time saved by early-converging methods goes back to the stages after them. A hard
deadline still stops a stage that overruns its estimate: what it finished is written, the rest
is named as cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.model.hooks import eval_mode, frozen_params
from hw5lib.stages.costs import Clock, Cut, Rates, Work

# Plans are made for this share of the time left: the estimates come from one short speed
# probe, and a report stage ran up to 13% slower than it predicted (bench/RESULTS.md).
PLAN_MARGIN = 0.85


def measure_rates(
    infer: Callable[[Tensor], Tensor],
    model: nn.Module,
    x: Tensor,
    *,
    clock: Clock = time.perf_counter,
    repeats: int = 2,
) -> Rates:
    """Images/s of a batched forward through ``infer`` and a forward+backward of ``model`` on
    the batch ``x``, after one warm-up call of each (first calls allocate and pick kernels)."""

    def per_second(step: Callable[[], object]) -> float:
        step()
        start = clock()
        for _ in range(repeats):
            step()
        return repeats * len(x) / max(clock() - start, 1e-9)

    def forward() -> None:
        with torch.inference_mode():
            infer(x)

    def backward() -> None:
        xi = x.detach().clone().requires_grad_(True)
        with eval_mode(model), frozen_params(model), torch.enable_grad():
            torch.autograd.grad(model(xi).sum(), xi)

    return Rates(forward=per_second(forward), backward=per_second(backward))


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    cuts: list[Cut]
    seconds: dict[str, float]  # estimated seconds per remaining stage, after the cuts

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


CostFn = Callable[["RunConfig"], Work]


def plan(
    cfg: RunConfig,
    costs: Sequence[tuple[str, CostFn]],
    rates: Rates,
    seconds_left: float,
    cuts: Sequence[Cut],
) -> Plan:
    """Apply ``cuts`` in order, only those for the ``costs`` stages still to run, until the
    estimated time of those stages fits ``seconds_left`` (or no cut is left)."""
    names = {name for name, _ in costs}

    def estimate(c: RunConfig) -> dict[str, float]:
        return {name: 0.0 if name in c.skip_stages else cost(c).at(rates) for name, cost in costs}

    seconds = estimate(cfg)
    applied: list[Cut] = []
    for cut in cuts:
        if sum(seconds.values()) <= seconds_left:
            break
        if cut.stage not in names or cut.stage in cfg.skip_stages:
            continue
        cheaper = cut.apply(cfg)
        cheaper_seconds = estimate(cheaper)
        if sum(cheaper_seconds.values()) >= sum(seconds.values()):
            continue  # saves nothing here (e.g. a subset larger than the data): not a cut
        cfg, seconds = cheaper, cheaper_seconds
        applied.append(cut)
    return Plan(cfg, applied, seconds)


# A stage may run this many times its worst-case estimate, and at least this many seconds more
# than it, before it is stopped like a stage past the deadline: the estimates come from one
# short speed probe (see PLAN_MARGIN), and a small stage's estimate is the least certain.
STAGE_ALLOWANCE, STAGE_ALLOWANCE_SECONDS = 1.5, 60.0


def stage_allowance(worst: float) -> float:
    """Seconds a stage estimated at ``worst`` may take before it is stopped."""
    return max(STAGE_ALLOWANCE * worst, worst + STAGE_ALLOWANCE_SECONDS)
