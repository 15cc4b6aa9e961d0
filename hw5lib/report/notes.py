"""--notes: the student's own answers, set into report.pdf.

A markdown file of sections ``## Q1`` ... ``## Q4`` (a title after the number is fine: ``## Q2.
Filters``). Each section's paragraphs (blank-line separated) follow that question's figures,
in order; a missing section is fine. A figure named in the text (``q1_saliency``) must be one
this run plans to make: a typo fails before any stage runs, not after minutes of figures.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hw5lib.errors import UserError
from hw5lib.report.sections import QUESTIONS as SECTIONS

_HEADING = re.compile(r"^##(?!#)\s*(\S*?)(?:[\s.:)-].*)?$")  # "## Q2. Filters" -> "Q2"
_TITLE = re.compile(r"^#(?!#)")  # a document title above the first section: not text
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s")  # keeps its own line in a paragraph
# A figure id as the stages name them: q1_saliency, q2_activations_cnn_2, appendix_convergence.
FIGURE_ID = re.compile(r"\b(?:q\d+|appendix)_\w+")


@dataclass(frozen=True)
class Reference:
    """A figure id named in the notes, and the line it is on."""

    line: int
    figure: str


@dataclass(frozen=True)
class Notes:
    """The parsed notes: paragraphs by section, the figures they name, the file's sha256."""

    shown: str  # the file as the user named it, for error lines (never recorded)
    sha256: str
    sections: Mapping[str, tuple[str, ...]]
    references: tuple[Reference, ...]


def line_error(shown: str, line: int, what: str) -> UserError:
    """One line naming the file and line: "NOTES.md line 12: no figure named ..."."""
    return UserError(f"{shown} line {line}: {what}")


def _paragraphs(lines: Sequence[str]) -> list[str]:
    """Blank-line separated paragraphs; soft-wrapped lines rejoin, list items keep a line."""
    out: list[str] = []
    current: list[str] = []
    for raw in [*lines, ""]:
        line = raw.strip()
        if not line:
            if current:
                out.append("".join(current))
            current = []
        elif current:
            current.append(("\n" if _LIST_ITEM.match(line) else " ") + line)
        else:
            current.append(line)
    return out


def parse_notes(text: str, shown: str) -> Notes:
    """Split ``text`` into its ``## Qn`` sections; an unknown section, or text above the
    first one, is a one-line error naming the line."""
    sections: dict[str, list[str]] = {}
    references: list[Reference] = []
    section: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        heading = _HEADING.match(line.strip())
        if heading:
            section = heading.group(1).upper()
            if section not in SECTIONS:
                listed = ", ".join(f"## {s}" for s in SECTIONS)
                raise line_error(
                    shown, number, f"unknown section {line.strip()!r} (sections: {listed})"
                )
            sections.setdefault(section, [])
            continue
        if section is None:
            if line.strip() and not _TITLE.match(line.strip()):
                raise line_error(shown, number, f"text above the first section (## {SECTIONS[0]})")
            continue
        sections[section].append(line)
        references += [Reference(number, m.group(0)) for m in FIGURE_ID.finditer(line)]
    return Notes(
        shown,
        hashlib.sha256(text.encode("utf-8")).hexdigest(),
        {s: tuple(_paragraphs(lines)) for s, lines in sections.items()},
        tuple(references),
    )


def read_notes(path: Path) -> Notes:
    """The notes file, parsed; unreadable or not UTF-8 is a one-line error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise UserError(f"--notes: cannot read {path} ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise UserError(f"--notes: {path} is not UTF-8 text") from None
    return parse_notes(text, str(path))


def check_references(notes: Notes, planned: Sequence[str]) -> None:
    """Every figure the notes name must be one of ``planned``; the first that is not fails."""
    for ref in notes.references:
        if ref.figure not in planned:
            known = ", ".join(planned)
            raise line_error(
                notes.shown, ref.line, f"no figure named {ref.figure} (figures: {known})"
            )


def unproduced(notes: Notes, produced: Sequence[str]) -> list[Reference]:
    """References to figures this run planned but did not write (cut by --budget, failed)."""
    return [r for r in notes.references if r.figure not in produced]
