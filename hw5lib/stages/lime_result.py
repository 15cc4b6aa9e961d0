"""What the Q3 LIME stage (``q3_lime``) hands back: its explanations and, from them, the
convergence record and panel (samples drawn per image) and the trust table's LIME stability.
It defines no stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw5lib.methods import lime_adapter, lime_stopping
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.protocol import Stability, StageResult

METHOD = "LIME"  # its row in the trust table and its entry in manifest.json's "convergence"


@dataclass
class LimeStageResult(StageResult):
    results: list[lime_adapter.LimeResult] = field(default_factory=list)
    complete: bool = False  # every explained image has its explanation
    cap: int = 0
    course: bool = False  # stock lime as the course's sample code (--conventions course)

    def convergence(self) -> dict[str, dict]:
        return {METHOD: self.record()} if self.results else {}

    def convergence_panel(self) -> Panel | None:
        if not self.results:
            return None
        return Panel(
            "LIME: samples drawn",
            "image",
            "samples",
            self.cap,
            bars=[r.samples for r in self.results],
            reference=f"{lime_stopping.MATCHED_SAMPLES}-sample LIME",
        )

    def stability(self) -> dict[str, Stability]:
        """The predicted top-5 superpixel overlap with a rerun under another seed, from bootstrap
        resamples of each run's own samples (``lime_adapter.resampled_agreement``)."""
        results = self.results if self.complete else []
        values = [r.stability for r in results if r.stability is not None]
        return {
            METHOD: Stability(
                float(np.mean(values)) if values else None,
                f"LIME, the top-{lime_stopping.TOP_K} superpixel overlap with a rerun under "
                f"another seed, predicted by refitting lime on bootstrap resamples of its own "
                f"samples ({len(values)} images)",
            )
        }

    def record(self) -> dict:
        rule = (
            f"stock lime, {self.cap} independent samples (the course's)"
            if self.course
            else f"foldover Hadamard samples (masks and complements) in rounds of {lime_stopping.ROUND_SAMPLES}, at least "
            f"{lime_stopping.MIN_SAMPLES}, until as precise as {lime_stopping.MATCHED_SAMPLES} "
            f"independent ones and the top {lime_stopping.TOP_K} separated by "
            f">= {lime_stopping.TOP_SEPARATION:g} standard error; cap {self.cap}"
        )
        return {
            "rule": rule,
            "samples": [r.samples for r in self.results],
            "needed": [[round(t[1], 1) for t in r.trace] for r in self.results],
            "separation": [[round(t[2], 2) for t in r.trace] for r in self.results],
        }
