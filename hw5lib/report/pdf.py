"""report.pdf from the figures and manifest.json that the pipeline wrote.

Built with fpdf2 rather than matplotlib's PdfPages: fpdf2 lays out real text (wrapped captions,
tables that break across pages, headings, an outline, page numbers) and embeds each PNG once,
so the file stays small and its text can be searched and extracted. The report only prints
what the manifest says; every number in a caption was put there by the pipeline.

The bytes are deterministic: a fixed creation date, a content-derived /ID, no timings, and a
temp file in the target directory that `os.replace` moves into place.

This module orders the document; the title page is pdf_title's, the tables of numbers are
pdf_tables', and the drawing of text, tables and figures is pdf_layout's.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF

from hw5lib.report.audit_tables import add_audit_section
from hw5lib.report.notes import Notes
from hw5lib.report.pdf_layout import (
    ReportPDF,
    add_bullets,
    add_figure,
    add_heading,
    add_paragraph,
    latin1,
)
from hw5lib.report.pdf_tables import add_accuracy, add_figure_table, add_trust_table
from hw5lib.report.pdf_title import add_title_page, report_title
from hw5lib.report.sections import QUESTIONS, SECTION_HEADINGS, section_heading

logger = logging.getLogger(__name__)

FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)
"""Creation date written into every report, so reruns produce the same bytes."""

CUTS_HEADING = "What the time budget cut"
FAILURES_HEADING = "What failed"
NOTES_HEADING = "Notes"


def _new_pdf(manifest: dict[str, Any]) -> ReportPDF:
    """A document with fixed metadata (no varying dates) and the report's margins."""
    pdf = ReportPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_margins(left=15, top=15, right=15)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_creation_date(FIXED_DATE)
    tool = manifest.get("tool") or {}
    creator = latin1(f"{tool.get('name', 'hw5')} {tool.get('version', '')}".strip())
    pdf.set_creator(creator)
    pdf.set_producer(creator)
    pdf.set_title(latin1(report_title(manifest)))
    return pdf


def _notes(pdf: FPDF, paragraphs: Iterable[str]) -> None:
    """The student's own paragraphs for a question (--notes), in their order."""
    add_heading(pdf, NOTES_HEADING, level=1)
    for paragraph in paragraphs:
        add_paragraph(pdf, paragraph)


def _grouped(figures: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Figures by section, manifest order kept; an unknown section goes to the appendix."""
    groups: dict[str, list[dict[str, Any]]] = {q: [] for q in (*QUESTIONS, "Appendix")}
    for fig in figures:
        section = str(fig.get("section", ""))
        if section not in groups:
            logger.warning("figure %s: unknown section %r, put in appendix", fig.get("id"), section)
            section = "Appendix"
        groups[section].append(fig)
    return groups


def build_report(manifest: dict[str, Any], out_dir: Path, notes: Notes | None = None) -> bytes:
    """Lay out the whole report and return the PDF bytes (deterministic for equal inputs);
    ``notes``' paragraphs close their question's section."""
    pdf = _new_pdf(manifest)
    add_title_page(pdf, manifest)
    groups = _grouped(manifest.get("figures") or [])
    number = 0
    for q in QUESTIONS:
        pdf.add_page()
        add_heading(pdf, section_heading(q, {f["id"] for f in groups[q]}))
        if not groups[q]:
            add_paragraph(pdf, "No figures were produced for this question in this run.")
        for fig in groups[q]:
            number += 1
            add_figure(pdf, out_dir, fig, number)
        if q == "Q3":
            add_accuracy(pdf, manifest)
            if manifest.get("audit"):  # hw5.py audit of this checkpoint, into the same folder
                add_audit_section(pdf, manifest["audit"])
        if q == "Q4" and manifest.get("trust"):
            add_trust_table(pdf, manifest["trust"])
        if notes and notes.sections.get(q):
            _notes(pdf, notes.sections[q])
    if manifest.get("cuts"):
        add_bullets(pdf, CUTS_HEADING, manifest["cuts"])
    if manifest.get("failures"):
        add_bullets(
            pdf,
            FAILURES_HEADING,
            [
                f"{f['stage']}: {f['message']} (its figures are missing; every other stage ran)"
                for f in manifest["failures"]
            ],
        )
    pdf.add_page()
    add_heading(pdf, SECTION_HEADINGS["Appendix"])
    for fig in groups["Appendix"]:
        number += 1
        add_figure(pdf, out_dir, fig, number)
    add_figure_table(pdf, manifest)
    return bytes(pdf.output())


def write_report(
    manifest: dict[str, Any], out_dir: Path, path: Path, notes: Notes | None = None
) -> None:
    """Write report.pdf to `path` atomically; figure PNGs are read relative to `out_dir`."""
    data = build_report(manifest, Path(out_dir), notes)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info(
        "wrote %s (%d bytes, %d figures)", path, len(data), len(manifest.get("figures") or [])
    )
