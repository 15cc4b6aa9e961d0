"""Does a rerun reproduce a submitted report? Two output folders compared figure by figure.

The course grants a regrade only when a figure cannot be reproduced on the grader's machine,
whose float rounding differs (another CPU, another thread count). So each figure's arrays are
compared by what rounding can and cannot change: an exact method's map to a small relative
difference; a sampled or iterated method's (LIME, SmoothGrad, DeepDream, filter ascent), where
rounding differences can grow over the iterations, by rank correlation or top-5 agreement;
integers (labels, confusion counts, superpixel ids) must be equal; and PNGs by their mean pixel
difference. Each tolerance is named once here and measured in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.errors import UserError

MANIFEST = "manifest.json"
IDENTICAL, REPRODUCED, DIFFERS, MISSING = (
    "identical",
    "reproduced within tolerance",
    "differs",
    "missing",
)
HELP_WIDTH = 96
TOP_K = 5  # LIME's figure shows its top five superpixels


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |a|: rounding noise relative to the map's own scale."""
    scale = float(np.abs(a).max()) if a.size else 0.0
    diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def differing_entries(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a != b))


def _per_item(a: np.ndarray, b: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]):
    """The lowest ``score`` over the items (first axis) of two arrays of equal shape."""
    items = zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)
    return min((score(x, y) for x, y in items), default=1.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 1 for equal vectors, 0 where one is constant and they differ."""
    from hw5lib.methods.metrics import (
        rank_correlation_1d,  # metrics imports torch: not for verify --help
    )

    if np.array_equal(a, b):
        return 1.0
    rho = rank_correlation_1d(a, b)
    return 0.0 if math.isnan(rho) else rho


def min_spearman(a: np.ndarray, b: np.ndarray) -> float:
    return _per_item(a, b, _spearman)


def min_top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    from hw5lib.methods.metrics import topk_overlap

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


# Arrays of sampled or iterated methods; every other float array is EXACT, others EQUAL.
SAMPLED = (
    ArrayRule("q3_lime", "weights", LIME_TOP),
    ArrayRule("q3_lime", "score", ITERATED_VALUES),
    ArrayRule("q4_smoothgrad", "attribution", RANKED),
    ArrayRule("q4_smoothgrad", "map", RANKED),
    ArrayRule("q4_deepdream", "dream", RANKED, minus="input"),
    ArrayRule("q2_filters", "*_images", RANKED),
    ArrayRule("q2_activations_*", "ascent_image", RANKED),
    ArrayRule("q2_activations_*", "ascent_curve", ITERATED_VALUES),
)


def array_rule(figure: str, array: str, values: np.ndarray) -> ArrayRule:
    for rule in SAMPLED:
        if fnmatch(figure, rule.figure) and fnmatch(array, rule.array):
            return rule
    exact = np.issubdtype(values.dtype, np.floating)
    return ArrayRule(figure, array, EXACT if exact else EQUAL)


@dataclass(frozen=True)
class Check:
    """One measured comparison: ``subject`` (file or file:array), its value under a tolerance."""

    subject: str
    tolerance: Tolerance
    value: float
    note: str = ""  # more of what was measured, e.g. the PNG's max pixel difference

    @property
    def passed(self) -> bool:
        return self.tolerance.passes(self.value)

    def describe(self) -> str:
        note = f", {self.note}" if self.note else ""
        return (
            f"{self.subject}: {self.tolerance.what} {self.value:.4g}{note} "
            f"({'limit' if self.passed else 'over the limit'} {self.tolerance.limit:g})"
        )


@dataclass(frozen=True)
class FigureVerdict:
    """How one figure of the submitted folder fared in the rerun."""

    figure: str
    verdict: str
    checks: tuple[Check, ...] = ()
    problem: str = ""  # what is missing or cannot be compared, where that decides the verdict

    def worst(self) -> str:
        if self.problem:
            return self.problem
        if self.verdict == IDENTICAL:
            return "byte-identical"
        check = max(self.checks, key=lambda c: c.tolerance.strain(c.value))
        return check.describe()


@dataclass(frozen=True)
class Verification:
    verdicts: tuple[FigureVerdict, ...]

    @property
    def reproduced(self) -> bool:
        return all(v.verdict in (IDENTICAL, REPRODUCED) for v in self.verdicts)


def read_manifest(folder: Path) -> dict:
    """A folder's manifest.json; any reason it cannot be used is a user error."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: give a folder hw5.py report wrote")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("figures"), list):
        raise UserError(f'{path} has no "figures" list: is it hw5\'s manifest?')
    return manifest


def figure_files(figure: dict) -> list[str]:
    return [figure[key] for key in ("png", "npz") if figure.get(key)]


def compare_npz(figure: str, a_path: Path, b_path: Path) -> tuple[list[Check], str]:
    """Checks of every array of the submitted NPZ; a problem where they cannot be compared."""
    with np.load(a_path, allow_pickle=False) as za, np.load(b_path, allow_pickle=False) as zb:
        a, b = dict(za), dict(zb)
    checks = []
    for key, values in sorted(a.items()):
        if key not in b:
            return checks, f"{a_path.name}: array {key!r} missing in the rerun"
        other = b[key]
        if values.shape != other.shape:
            return checks, f"{a_path.name}:{key} shape {values.shape} vs {other.shape}"
        rule = array_rule(figure, key, values)
        if rule.minus in a and rule.minus in b:
            values, other = values - a[rule.minus], other - b[rule.minus]
        value = rule.tolerance.measure(values, other)
        checks.append(Check(f"{a_path.name}:{key}", rule.tolerance, value))
    return checks, ""


def compare_png(a_path: Path, b_path: Path) -> tuple[list[Check], str]:
    with Image.open(a_path) as ia, Image.open(b_path) as ib:
        a, b = (np.asarray(i.convert("RGB"), dtype=np.int16) for i in (ia, ib))
    if a.shape != b.shape:
        sizes = " vs ".join(f"{x.shape[1]}x{x.shape[0]}" for x in (a, b))
        return [], f"{a_path.name}: size {sizes}"
    max_diff = int(np.abs(a - b).max()) if a.size else 0
    return [Check(a_path.name, PNG, PNG.measure(a, b), f"max {max_diff}")], ""


def compare_file(figure: str, a_path: Path, b_path: Path) -> tuple[list[Check], str]:
    if a_path.suffix == ".npz":
        return compare_npz(figure, a_path, b_path)
    return compare_png(a_path, b_path)


def compare_figure(
    figure: dict, submitted: Path, rerun: Path, rerun_ids: set[str]
) -> FigureVerdict:
    name = str(figure.get("id", "?"))
    if name not in rerun_ids:
        return FigureVerdict(name, MISSING, problem=f"not in {rerun / MANIFEST}")
    files = figure_files(figure)
    for folder in (submitted, rerun):
        absent = [f for f in files if not (folder / f).is_file()]
        if absent:
            return FigureVerdict(name, MISSING, problem=f"{', '.join(absent)} not in {folder}")
    if all((submitted / f).read_bytes() == (rerun / f).read_bytes() for f in files):
        return FigureVerdict(name, IDENTICAL)
    checks: list[Check] = []
    for f in files:
        try:
            found, problem = compare_file(name, submitted / f, rerun / f)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            found, problem = [], f"cannot read {f}: {err}"
        checks += found
        if problem:
            return FigureVerdict(name, DIFFERS, tuple(checks), problem)
    verdict = REPRODUCED if all(c.passed for c in checks) else DIFFERS
    return FigureVerdict(name, verdict, tuple(checks))


def trust_numbers(manifest: dict) -> tuple[list[str], np.ndarray]:
    """The trust table's numeric cells (booleans and nulls left out), and where each is."""
    trust = manifest.get("trust") or {}
    where, values = [], []
    for row in trust.get("rows", []):
        for column, cell in zip(trust.get("columns", []), row[1:], strict=False):
            if isinstance(cell, int | float) and not isinstance(cell, bool):
                where.append(f"{row[0]}: {column}")
                values.append(float(cell))
    return where, np.array(values)


def compare_trust(a: dict, b: dict) -> FigureVerdict | None:
    """The trust table as one more row; None when the submitted manifest has none."""
    where_a, va = trust_numbers(a)
    if not where_a:
        return None
    name = "manifest.json:trust"  # one word, as the figure ids: the table stays easy to parse
    where_b, vb = trust_numbers(b)
    if where_a != where_b:
        return FigureVerdict(name, DIFFERS, problem="its rows or columns differ")
    if np.array_equal(va, vb):
        return FigureVerdict(name, IDENTICAL)
    worst = int(np.argmax(np.abs(va - vb)))
    check = Check(f"{where_a[worst]} {va[worst]:g} vs {vb[worst]:g}", TRUST, TRUST.measure(va, vb))
    return FigureVerdict(name, REPRODUCED if check.passed else DIFFERS, (check,))


def verify(submitted: Path, rerun: Path) -> Verification:
    """Every figure the submitted manifest lists, compared with the rerun's."""
    sub, re_ = read_manifest(submitted), read_manifest(rerun)
    rerun_ids = {str(f.get("id")) for f in re_["figures"]}
    verdicts = [compare_figure(f, submitted, rerun, rerun_ids) for f in sub["figures"]]
    trust = compare_trust(sub, re_)
    return Verification(tuple(verdicts + ([trust] if trust else [])))


def table(result: Verification) -> str:
    """One line per figure: figure, verdict, the worst number (what it is, and its limit)."""
    rows = [("figure", "verdict", "worst number")]
    rows += [(v.figure, v.verdict, v.worst()) for v in result.verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    bad = sum(v.verdict in (DIFFERS, MISSING) for v in result.verdicts)
    summary = (
        f"every figure reproduces ({len(result.verdicts)} compared)"
        if result.reproduced
        else f"{bad} of {len(result.verdicts)} do not reproduce"
    )
    return "\n".join([*lines, summary])


def tolerances_help() -> str:
    """The tolerances as --help lists them."""
    return "\n".join(
        textwrap.fill(
            t.means, HELP_WIDTH, initial_indent=f"  {t.describe():<28} ", subsequent_indent=" " * 31
        )
        for t in TOLERANCES
    )
