"""The report's stages in run order: one entry per report figure (family), each defined in its
own file with its stage function, cost, cuts, options and trust-table methods.

Adding a method: its function in a method module, one stage file with a ``STAGE`` entry, one
line below. The budget's cuts are gathered from the entries and applied by rank, cheapest to
lose first: cross-checks before figures, fewer samples than the matched precision only after
whole optional stages are gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..budget import Cut
from . import (
    cams,
    confusion,
    dream,
    feature_maps,
    filters,
    grad_x_input,
    integrated_gradients,
    lime,
    saliency,
    smoothgrad,
    trust,
)
from .record import Method, Stage, StageResult

STAGES: tuple[Stage, ...] = (
    saliency.STAGE,
    filters.STAGE,
    lime.STAGE,
    smoothgrad.STAGE,
    grad_x_input.STAGE,
    integrated_gradients.STAGE,
    confusion.STAGE,
    cams.STAGE,
    feature_maps.STAGE,
    dream.STAGE,
    trust.STAGE,  # last: it scores the maps of every method before it
)


def with_stage(stage: Stage, stages: Sequence[Stage] = STAGES) -> tuple[Stage, ...]:
    """``stages`` with one more entry, before the trust checks that score its maps."""
    last = len(stages) - (stages[-1].name == trust.NAME if stages else 0)
    return (*stages[:last], stage, *stages[last:])


def cuts_of(stages: Sequence[Stage]) -> list[Cut]:
    """Every entry's cuts in rank order."""
    return sorted((c for s in stages for c in s.cuts), key=lambda c: c.rank)


CUTS = cuts_of(STAGES)

__all__ = ["CUTS", "STAGES", "Method", "Stage", "StageResult", "cuts_of", "with_stage"]
