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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.model.hooks import eval_mode, frozen_params

Clock = Callable[[], float]

# Seconds of fixed work per figure stage: drawing and writing PNG/NPZ files.
FIGURE_SECONDS = 1.5
# Kept free at the end for manifest.json and report.pdf.
RESERVE_SECONDS = 15.0
# Plans are made for this share of the time left: the estimates come from one short speed
# probe, and a report stage ran up to 13% slower than it predicted (bench/RESULTS.md).
PLAN_MARGIN = 0.85


@dataclass(frozen=True)
class Rates:
    """Measured images per second of the model on this machine."""

    forward: float  # through the inference model, batched
    backward: float  # forward + backward to the input, batched

    def to_dict(self) -> dict[str, float]:
        return {"forward_per_s": round(self.forward, 2), "backward_per_s": round(self.backward, 2)}

    def best(self, other: Rates) -> Rates:
        """The faster of two probes of each kind: a probe is only ever slowed by other work."""
        return Rates(max(self.forward, other.forward), max(self.backward, other.backward))


@dataclass(frozen=True)
class Work:
    """A stage's work: images forward, images forward+backward, and fixed seconds."""

    forward: float = 0.0
    backward: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(
            self.forward + other.forward,
            self.backward + other.backward,
            self.seconds + other.seconds,
        )

    def at(self, rates: Rates) -> float:
        """Estimated seconds at the measured ``rates``."""
        return self.forward / rates.forward + self.backward / rates.backward + self.seconds


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
class Cut:
    """One way to make a stage cheaper: ``change`` sets RunConfig fields (``skip`` drops the
    stage), ``what`` says in the manifest what the reader loses."""

    stage: str
    what: str
    change: dict[str, object]
    rank: int = 0  # order among all stages' cuts: lower is cheaper to lose, tried first

    def apply(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the change; a limit never raises a setting already below it."""
        fields: dict[str, Any] = dict(self.change)
        if fields.pop("skip", False):
            fields["skip_stages"] = (*cfg.skip_stages, self.stage)
        for key, value in fields.items():
            now = getattr(cfg, key)
            if isinstance(value, int | float) and not isinstance(value, bool) and now is not None:
                fields[key] = min(now, value)
        return replace(cfg, **fields)


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


class Deadline:
    """The run's clock and its hard stop; ``None`` budget never expires."""

    def __init__(
        self, budget: float | None, clock: Clock = time.perf_counter, start: float | None = None
    ) -> None:
        self.clock = clock
        self.start = clock() if start is None else start  # e.g. when the process began
        self.budget = budget

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds until the hard stop (minus the reserve for the manifest and report)."""
        if self.budget is None:
            return float("inf")
        return self.budget - RESERVE_SECONDS - self.elapsed()

    def passed(self) -> bool:
        return self.left() <= 0

    def within(self, seconds: float) -> StageDeadline:
        """This deadline, or ``seconds`` from now if that comes first: one stage that runs far
        slower than its estimate (a busy machine) then leaves the later stages their time."""
        return StageDeadline(self, self.clock() + seconds)


class StageDeadline(Deadline):
    """A run's deadline with an earlier stop for the stage under way."""

    def __init__(self, run: Deadline, stop_at: float) -> None:
        super().__init__(run.budget, run.clock, run.start)
        self.stop_at = stop_at

    def left(self) -> float:
        return min(super().left(), self.stop_at - self.clock())


# A stage may run this many times its worst-case estimate, and at least this many seconds more
# than it, before it is stopped like a stage past the deadline: the estimates come from one
# short speed probe (see PLAN_MARGIN), and a small stage's estimate is the least certain.
STAGE_ALLOWANCE, STAGE_ALLOWANCE_SECONDS = 1.5, 60.0


def stage_allowance(worst: float) -> float:
    """Seconds a stage estimated at ``worst`` may take before it is stopped."""
    return max(STAGE_ALLOWANCE * worst, worst + STAGE_ALLOWANCE_SECONDS)
