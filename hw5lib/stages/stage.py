"""A registry entry: one report figure (family) and everything the runner needs of it, so the
runner plans, runs and records it without knowing which stage it is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.stages.context import Method, Run, Shares
from hw5lib.stages.costs import Cut, Deadline, Work
from hw5lib.stages.protocol import StageResult
from hw5lib.tolerances import ArrayRule

Cost = Callable[[Run, RunConfig, Shares], Work]
# (the run, the settings planned for this stage, its deadline, its progress bar) -> its result
RunStage = Callable[[Run, RunConfig, Deadline, tqdm], StageResult]


@dataclass(frozen=True)
class Share:
    """An adaptive stage's spending: ``expected`` before the run measured it (the sample set's
    mean in bench/RESULTS.md, rounded up) and ``at_cap`` when nothing converges."""

    expected: float
    at_cap: Callable[[RunConfig], float] = lambda cfg: 1.0


@dataclass(frozen=True)
class Stage:
    """One registry entry: a report figure (family) and everything the runner needs of it."""

    name: str  # as the progress bar, the cuts and the manifest name it
    section: str  # the report section of its figures
    run: RunStage
    cost: Cost  # the work it will do under a config, for --budget
    units: Callable[[Run, RunConfig], int] = lambda run, cfg: 1  # progress-bar steps
    cuts: tuple[Cut, ...] = ()  # ways the budget planner can make it cheaper
    options: tuple[str, ...] = ()  # the RunConfig fields it reads
    methods: tuple[Method, ...] = ()  # its rows in the trust table
    share: Share | None = None  # adaptive: how much of its cap it is expected to spend
    hooks: bool = False  # reads inside the model (no TorchScript)
    figures: Callable[[Run], tuple[str, ...]] = lambda run: ()  # the ids it plans to write
    # its manifest sections (StageResult.manifest_entries) and "decisions" entries
    # (StageResult.decisions) when it did not run: the manifest keeps one shape
    absent: Mapping[str, Any] = field(default_factory=dict)
    undecided: Mapping[str, Any] = field(default_factory=dict)
    verify: tuple[ArrayRule, ...] = ()  # the tolerances of its sampled or iterated arrays
