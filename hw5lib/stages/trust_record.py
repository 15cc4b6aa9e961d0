"""What the trust stage records: its result and, from it, manifest.json's "trust" section (the
table's columns, rows and notes text, which the report prints under the table). It defines no
stage: ``trust_table`` runs the checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hw5lib.stages.protocol import StageResult

FLAG_ABOVE = 0.5  # |rank corr.| with the randomized model's map above which a method is flagged
COLUMNS = [  # (key of a row, its heading in the table)
    ("method", "method"),
    ("deletion", "deletion AUC (low=good)"),
    ("insertion", "insertion AUC (high=good)"),
    ("randomization", "randomization rank corr."),
    ("flagged", "flagged"),
    ("pointing", "pointing"),
    ("mass_inside", "mass inside"),
    ("stability", "stability"),
]


@dataclass
class TrustResult(StageResult):
    rows: list[dict] = field(default_factory=list)
    mask_fraction: float | None = None
    randomized_layers: list[str] = field(default_factory=list)
    randomization_skipped: str | None = None
    unscored: list[str] = field(default_factory=list)  # methods whose maps are not finite
    deletion_steps: int = 0
    randomize_top: int = 0
    rerun_notes: list[str] = field(default_factory=list)  # how a method's rerun differs
    stability_notes: list[str] = field(default_factory=list)  # how each stability was estimated

    def manifest_entries(self) -> dict[str, Any]:
        return {"trust": trust_manifest(self)}


def trust_manifest(result: TrustResult | None) -> dict | None:
    """manifest.json's "trust" section: the table and its notes (None: no row, nothing unscored)."""
    if result is None or not (result.rows or result.unscored):
        return None
    table = [
        [
            None if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k])
            for k, _ in COLUMNS
        ]
        for r in result.rows
    ]
    notes = (
        f"Deletion/insertion: softmax probability of the target as the most important pixels are "
        f"set to zero / revealed on a blurred copy, {result.deletion_steps} steps (Petsiuk et al., "
        f"2018); compare with the random map. Randomization: Spearman correlation between the map of "
        f"the trained model and of a copy whose top {result.randomize_top} parameterized layers "
        f"({', '.join(result.randomized_layers)}) were re-initialized (Adebayo et al., "
        f"2018){''.join(', ' + note for note in result.rerun_notes)}; 'flagged' when "
        f"|corr| > {FLAG_ABOVE}, i.e. the map barely depends on the weights. "
    )
    if result.mask_fraction is not None:
        notes += (
            f"Pointing: share of images whose map maximum lies on the object; mass inside: share "
            f"of positive attribution on the object, which covers {result.mask_fraction:.2f} of the "
            f"image. "
        )
    if result.unscored:
        notes += (
            f"Not scored, as their maps are not finite (NaN or infinite values): "
            f"{', '.join(result.unscored)}. "
        )
    if result.randomization_skipped is not None:
        notes += f"Randomization check skipped: {result.randomization_skipped}. "
    if result.stability_notes:
        notes += f"Stability: {'; '.join(result.stability_notes)}."
    return {"columns": [heading for _, heading in COLUMNS], "rows": table, "notes": notes}
