"""What the Q4 SHAP stage (``q4_shap``) hands back: its per-image permutation counts and
evaluations, and from them the convergence record (read back by a replay) and panel, and the
caption with its numbers (efficiency gap, positive share), and the per-image caps. No stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw5lib.config import RunConfig
from hw5lib.methods import shap_values
from hw5lib.methods.lime_stopping import TOP_K, TOP_RIVALS, TOP_SEPARATION
from hw5lib.methods.shap_values import MIN_PAIRS, ROUND_PAIRS
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.protocol import Stability, StageResult
from hw5lib.stages.record import number

METHOD = "SHAP"  # its row in the trust table and its entry in manifest.json's "convergence"


FLOOR_ONLY = 1  # the evaluation cap the budget's cut sets: every image stops at the rule's floor


def rule_text(cap: int, adaptive: bool) -> str:
    """The stopping rule, as the convergence record and the caption state it."""
    floor = f"at least {2 * MIN_PAIRS} permutations"
    if cap <= FLOOR_ONLY:
        return f"antithetic permutation pairs, {2 * MIN_PAIRS} permutations (the time budget's cut)"
    if not adaptive:
        return f"antithetic permutation pairs, {floor}, to the cap of {cap} model evaluations"
    return (
        f"antithetic permutation pairs (each followed by its reverse) in rounds of {ROUND_PAIRS}, "
        f"{floor}, until the top {TOP_K} values stand >= {TOP_SEPARATION:g} standard error "
        f"above the next {TOP_RIVALS}; cap {cap} model evaluations"
    )


def efficiency_gap(values: np.ndarray, full: np.ndarray, empty: np.ndarray) -> float:
    """max over images of |sum of values - (f(x) - f(all hidden))| / |f(x) - f(all hidden)|."""
    change = full.astype(np.float64) - empty
    gap = np.abs(values.astype(np.float64).sum(1) - change)
    return float((gap / np.maximum(np.abs(change), 1e-12)).max())


def positive_share(values: np.ndarray) -> float:
    """The positive values' share of the values' absolute sum, over every image."""
    v = values.astype(np.float64)
    total = np.abs(v).sum()
    return float(v.clip(min=0).sum() / total) if total > 0 else float("nan")


def span(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def caption(values, full, empty, perms: list[int], evals: list[int], cfg: RunConfig) -> str:
    pos = positive_share(values)
    return (
        f"SHAP (Lundberg & Lee, 2017): Shapley values of LIME's SLIC superpixels for the target "
        f"class's logit, a hidden superpixel showing its mean colour, estimated by Captum's "
        f"ShapleyValueSampling with {rule_text(cfg.shap_evaluations, cfg.adaptive)} (seed "
        f"{cfg.seed}): {span(perms)} permutations, {span(evals)} model evaluations per image "
        f"(mean {np.mean(evals):.0f}). Red superpixels raise the score, blue lower it. "
        f"Efficiency check, max over images of |sum of values - (f(x) - f(all hidden))| / |f(x) - f(all hidden)|: {efficiency_gap(values, full, empty):.1e}. "
        f"Positive values carry {number(pos)} of the absolute mass, negative "
        f"{number(1 - pos)}."
    )


def permutation_cap(cfg: RunConfig, segments: int) -> int:
    """The most permutations ``shap_values`` draws for an image of ``segments`` superpixels."""
    per_pair = shap_values.evaluations(segments, 2) - shap_values.evaluations(segments, 0)
    return 2 * max(shap_values.MIN_PAIRS, cfg.shap_evaluations // per_pair)


def at_cap(cfg: RunConfig, segments: int) -> int:
    """Model evaluations of an image of ``segments`` superpixels that never converges."""
    return shap_values.evaluations(segments, permutation_cap(cfg, segments))


@dataclass
class ShapStageResult(StageResult):
    permutations: list[int] = field(default_factory=list)  # drawn per image
    evaluations: list[int] = field(default_factory=list)  # model evaluations per image
    separation: list[list[float]] = field(default_factory=list)  # per image, per round
    cap: int = 0
    adaptive: bool = True
    agreement: list[float] = field(default_factory=list)  # per image, when every image ran

    def stability(self) -> dict[str, Stability]:
        """Two seeds' values' correlation, predicted from two halves of each image's pairs."""
        value = float(np.mean(self.agreement) ** 2) if self.agreement else None
        how = "SHAP, the correlation of two seeds' values predicted from two halves of its "
        return {METHOD: Stability(value, how + "permutation pairs (Spearman-Brown)")}

    def convergence(self) -> dict[str, dict]:
        if not self.permutations:
            return {}
        return {
            METHOD: {
                "rule": rule_text(self.cap, self.adaptive),
                "permutations": self.permutations,
                "evaluations": self.evaluations,
                "separation": [[round(v, 2) for v in row] for row in self.separation],
            }
        }

    def convergence_panel(self) -> Panel | None:
        if not self.permutations:
            return None
        return Panel(
            "SHAP: model evaluations",
            "image",
            "evaluations",
            self.cap if self.cap > FLOOR_ONLY else None,
            bars=self.evaluations,
            reference="80-permutation SHAP under another seed",
            note=f"SHAP's floor of {2 * MIN_PAIRS} permutations can pass its cap on images "
            "with many superpixels.",
        )
