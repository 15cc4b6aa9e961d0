"""What a stage hands back, and everything the rest of the run reads from it: its figures, its
maps for the trust table, and the records it declares (manifest sections, replayed decisions,
convergence record and panel, stability). The runner, the manifest, the appendix figure, the
trust table and replay loop over these; none of them names a stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from hw5lib.report.convergence_plot import Panel


@dataclass(frozen=True)
class FigureRecord:
    """One figure as the manifest and the report see it."""

    id: str
    section: str  # Q1..Q4 or Appendix: where the report puts it
    title: str
    caption: str
    png: str
    npz: str | None
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": self.section,
            "title": self.title,
            "caption": self.caption,
            "png": self.png,
            "npz": self.npz,
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class Stability:
    """A method's stability across seeds, for the trust table: the value (None: not measured)
    and how it was estimated, for the table's notes."""

    value: float | None
    how: str


@dataclass
class StageResult:
    """What a stage hands back: its figures and, for the trust table, each method's map of the
    explained images. Adaptive stages add ``share``, the share of their cap they spent.

    A subclass overrides what it has to declare; every default is "nothing"."""

    figures: list[FigureRecord] = field(default_factory=list)
    maps: dict[str, Tensor] = field(default_factory=dict)  # method -> [N,H,W]
    share: float | None = None

    def manifest_entries(self) -> dict[str, Any]:
        """Top-level sections of manifest.json this result supplies (``Stage.absent`` gives
        them when the stage did not run)."""
        return {}

    def decisions(self) -> dict[str, Any]:
        """Entries of manifest.json's "decisions" that a replay reads back (``replay.decision``)."""
        return {}

    def convergence(self) -> dict[str, dict]:
        """Method -> its stopping rule ("rule") and per-image record, for manifest.json's
        "convergence" (a replay reads the per-image counts back: ``Run.replayed``)."""
        return {}

    def convergence_panel(self) -> Panel | None:
        """Its panel in the appendix convergence figure."""
        return None

    def stability(self) -> dict[str, Stability]:
        """Method -> its stability across seeds, for the trust table."""
        return {}

    def trust_rows(self) -> list[dict]:
        """Extra rows of the trust table (keys of ``trust_record.COLUMNS``)."""
        return []
