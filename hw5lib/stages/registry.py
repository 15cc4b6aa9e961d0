"""The report's stages in run order: one entry per report figure (family), each defined in its
own file (named by its figure) with its stage function, cost, cuts, options, trust-table methods
and verify rules; its result declares its manifest sections, convergence record and panel,
stability and replayed decisions (protocol.py).

Adding a method, sampled or not: its function in the methods package, one stage file with a
``STAGE`` entry, one line below, its tests. The budget's cuts are gathered from the entries and
applied by rank, cheapest to lose first: cross-checks before figures, fewer samples than the
matched precision only after whole optional stages are gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from hw5lib.stages import (
    q1_saliency,
    q2_filters,
    q3_confusion,
    q3_lime,
    q4_cams,
    q4_deepdream,
    q4_feature_maps,
    q4_grad_x_input,
    q4_integrated_gradients,
    q4_shap,
    q4_smoothgrad,
    q4_smoothgrad_sigma,
    trust_table,
)
from hw5lib.stages.context import Method
from hw5lib.stages.costs import Cut
from hw5lib.stages.stage import Stage
from hw5lib.tolerances import ArrayRule

STAGES: tuple[Stage, ...] = (
    q1_saliency.STAGE,
    q2_filters.STAGE,
    q3_lime.STAGE,
    q4_smoothgrad.STAGE,
    q4_smoothgrad_sigma.STAGE,
    q4_grad_x_input.STAGE,
    q4_integrated_gradients.STAGE,
    q4_shap.STAGE,
    q3_confusion.STAGE,
    q4_cams.STAGE,
    q4_feature_maps.STAGE,
    q4_deepdream.STAGE,
    trust_table.STAGE,  # last: it scores the maps of every method before it
)


def with_stage(stage: Stage, stages: Sequence[Stage] = STAGES) -> tuple[Stage, ...]:
    """``stages`` with one more entry, before the trust checks that score its maps."""
    last = len(stages) - (stages[-1].name == trust_table.NAME if stages else 0)
    return (*stages[:last], stage, *stages[last:])


def cuts_of(stages: Sequence[Stage]) -> list[Cut]:
    """Every entry's cuts in rank order."""
    return sorted((c for s in stages for c in s.cuts), key=lambda c: c.rank)


def methods_of(stages: Sequence[Stage], skipped: Sequence[str] = ()) -> tuple[Method, ...]:
    """The map methods of the entries not ``skipped``: the trust table's rows."""
    return tuple(m for s in stages if s.name not in skipped for m in s.methods)


def verify_rules(stages: Sequence[Stage] = STAGES) -> tuple[ArrayRule, ...]:
    """Every entry's tolerances for its sampled or iterated arrays (``hw5.py verify``)."""
    return tuple(rule for s in stages for rule in s.verify)


CUTS = cuts_of(STAGES)

__all__ = ["CUTS", "STAGES", "cuts_of", "methods_of", "verify_rules", "with_stage"]
