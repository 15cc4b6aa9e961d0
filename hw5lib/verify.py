"""Does a rerun reproduce a submitted report? Two output folders compared figure by figure,
each array by its tolerance (tolerances.py): the rules the stages declare for their sampled and
iterated arrays (LIME, SmoothGrad, DeepDream, filter ascent), EXACT for every other float array,
EQUAL for integers and text; PNGs by their mean pixel difference; the trust table's numbers.
"""

from __future__ import annotations

import json
import textwrap
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.errors import UserError
from hw5lib.tolerances import EQUAL, EXACT, PNG, TOLERANCES, TRUST, ArrayRule, Tolerance

MANIFEST = "manifest.json"
IDENTICAL, REPRODUCED, DIFFERS, MISSING = (
    "identical",
    "reproduced within tolerance",
    "differs",
    "missing",
)
HELP_WIDTH = 96


def declared_rules() -> tuple[ArrayRule, ...]:
    """The rules every registered stage declares for its sampled or iterated arrays (imported
    only when comparing: ``hw5.py verify --help`` stays free of the model libraries)."""
    from hw5lib.stages.registry import verify_rules

    return verify_rules()


def array_rule(
    figure: str, array: str, values: np.ndarray, rules: Sequence[ArrayRule] = ()
) -> ArrayRule:
    """The declared rule of ``figure``'s ``array``; else EXACT for floats, EQUAL for the rest."""
    for rule in rules:
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


def compare_npz(
    figure: str, a_path: Path, b_path: Path, rules: Sequence[ArrayRule]
) -> tuple[list[Check], str]:
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
        rule = array_rule(figure, key, values, rules)
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


def compare_file(
    figure: str, a_path: Path, b_path: Path, rules: Sequence[ArrayRule]
) -> tuple[list[Check], str]:
    if a_path.suffix == ".npz":
        return compare_npz(figure, a_path, b_path, rules)
    return compare_png(a_path, b_path)


def compare_figure(
    figure: dict, submitted: Path, rerun: Path, rerun_ids: set[str], rules: Sequence[ArrayRule]
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
            found, problem = compare_file(name, submitted / f, rerun / f, rules)
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


def verify(submitted: Path, rerun: Path, rules: Sequence[ArrayRule] | None = None) -> Verification:
    """Every figure the submitted manifest lists, compared with the rerun's; ``rules``: the
    sampled and iterated arrays' tolerances (default: what the registered stages declare)."""
    sub, re_ = read_manifest(submitted), read_manifest(rerun)
    rules = declared_rules() if rules is None else rules
    rerun_ids = {str(f.get("id")) for f in re_["figures"]}
    verdicts = [compare_figure(f, submitted, rerun, rerun_ids, rules) for f in sub["figures"]]
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
