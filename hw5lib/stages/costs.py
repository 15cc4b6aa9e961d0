"""What a stage costs and how long it may take: its work in units of the model's measured speed
(``Work`` at ``Rates``), the cuts that make it cheaper, and the deadline it runs under. The
runner's planner (run/budget.py) prices and cuts the stages with these."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hw5lib.config import RunConfig

Clock = Callable[[], float]

# Seconds of fixed work per figure stage: drawing and writing PNG/NPZ files.
FIGURE_SECONDS = 1.5
# Kept free at the end for manifest.json and report.pdf.
RESERVE_SECONDS = 15.0


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


@dataclass(frozen=True)
class Cut:
    """One way to make a stage cheaper: ``change`` sets RunConfig fields (``skip`` drops the
    stage), ``what`` says in the manifest what the reader loses."""

    stage: str
    what: str
    change: dict[str, object]
    rank: float = 0  # order among all stages' cuts: lower is cheaper to lose, tried first

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
