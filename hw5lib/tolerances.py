"""How much a rerun's arrays may differ from the submitted ones and still reproduce a figure.

The course grants a regrade only when a figure cannot be reproduced on the grader's machine,
whose float rounding differs (another CPU, another thread count). So each array is compared by
what rounding can and cannot change: an exact method's map to a small relative difference; a
sampled or iterated method's, where rounding differences can grow over the iterations, by rank
correlation or top-5 agreement; integers must be equal; PNGs by their mean pixel difference.
Each tolerance is named once here and measured in bench/RESULTS.md; a stage declares which of
its arrays are sampled or iterated (``Stage.verify``), every other float array is EXACT.

Torch-free: ``hw5.py verify --help`` lists these without loading a model library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

TOP_K = 5  # LIME's figure shows its top five superpixels


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |a|: rounding noise relative to the map's own scale."""
    scale = float(np.abs(a).max()) if a.size else 0.0
    diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def differing_entries(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a != b))


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k for two weight vectors (ties by lower index)."""
    va, vb = np.asarray(a).ravel(), np.asarray(b).ravel()
    if va.shape != vb.shape:
        raise ValueError(f"vectors differ in length: {va.size} vs {vb.size}")
    if not 1 <= k <= va.size:
        raise ValueError(f"k must lie in [1, {va.size}], got {k}")
    top_a = np.argsort(-va, kind="stable")[:k]
    top_b = np.argsort(-vb, kind="stable")[:k]
    return len(np.intersect1d(top_a, top_b)) / k


def rank_correlation_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two weight vectors (nan when one is constant)."""
    va, vb = np.asarray(a).ravel(), np.asarray(b).ravel()
    if va.shape != vb.shape:
        raise ValueError(f"vectors differ in length: {va.size} vs {vb.size}")
    if np.all(va == va[0]) or np.all(vb == vb[0]):
        return math.nan
    return float(stats.spearmanr(va, vb).statistic)


def _per_item(a: np.ndarray, b: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]):
    """The lowest ``score`` over the items (first axis) of two arrays of equal shape."""
    items = zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)
    return min((score(x, y) for x, y in items), default=1.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 1 for equal vectors, 0 where one is constant and they differ."""
    if np.array_equal(a, b):
        return 1.0
    rho = rank_correlation_1d(a, b)
    return 0.0 if math.isnan(rho) else rho


def min_spearman(a: np.ndarray, b: np.ndarray) -> float:
    return _per_item(a, b, _spearman)


def min_top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    return _per_item(a, b, lambda x, y: topk_overlap(x, y, min(TOP_K, x.size)))


@dataclass(frozen=True)
class Tolerance:
    """One way to compare two arrays, and the limit within which they count as reproduced."""

    what: str  # the measure, as the table prints it
    limit: float
    at_least: bool  # True: the measure must be >= limit (an agreement); else <= limit
    measure: Callable[[np.ndarray, np.ndarray], float]
    means: str  # for --help and README

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def strain(self, value: float) -> float:
        """How near the limit a value is: 0 perfect, 1 at the limit, > 1 past it."""
        if self.at_least:
            room = 1.0 - self.limit
            return (1.0 - value) / room if room > 0 else float(value < self.limit)
        if self.limit > 0:
            return value / self.limit
        return math.inf if value > 0 else 0.0

    def describe(self) -> str:
        return f"{self.what} {'>=' if self.at_least else '<='} {self.limit:g}"


# The tolerances; bench/RESULTS.md ("Reproducing on another machine") gives the measurements.
EXACT = Tolerance(
    "max rel. diff",
    1e-4,  # 1 vs 2 threads: 1.1e-7 at most (the CAMs, saliency, grad x input)
    False,
    max_relative_difference,
    "exact methods' float arrays (saliency, grad x input, IG, CAMs, feature maps, activations, "
    "inputs): max |a-b| / max |a|, float32 rounding of another CPU",
)
EQUAL = Tolerance(
    "entries differing",
    0,
    False,
    differing_entries,
    "integer and text arrays (targets, labels, confusion counts, superpixel ids) must be equal",
)
RANKED = Tolerance(
    "min Spearman",
    0.95,  # rounding grown over DeepDream's 60 steps: 0.990; another jitter seed: 0.57
    True,
    min_spearman,
    "sampled or iterated maps (SmoothGrad, DeepDream's change to the image, filter ascent "
    "images): the lowest per-image rank correlation",
)
LIME_TOP = Tolerance(
    f"min top-{TOP_K} overlap",
    0.8,
    True,
    min_top_overlap,
    f"LIME weights: per image, at least {TOP_K - 1} of the {TOP_K} highest superpixels shared",
)
ITERATED_VALUES = Tolerance(
    "max rel. diff",
    0.02,
    False,
    max_relative_difference,
    "numbers of sampled or iterated methods (LIME's R^2, filter ascent curves): max |a-b| / max |a|",
)
PNG = Tolerance(
    "mean |pixel diff|",
    1.0,
    False,
    lambda a, b: float(np.abs(a - b).mean()),
    "PNGs (same size): mean absolute difference of the RGB bytes, 0-255; the max is shown",
)
TRUST = Tolerance(
    "max |diff|",
    0.02,
    False,
    lambda a, b: float(np.abs(a - b).max()) if a.size else 0.0,
    "the trust table's numbers in manifest.json (AUCs, correlations, shares)",
)
TOLERANCES = (EXACT, EQUAL, RANKED, LIME_TOP, ITERATED_VALUES, PNG, TRUST)


@dataclass(frozen=True)
class ArrayRule:
    """The tolerance of one array (glob) of one figure (glob); ``minus``: compare the array's
    difference from this other array (DeepDream: what the dream changed, not the image)."""

    figure: str
    array: str
    tolerance: Tolerance
    minus: str | None = None
