"""report.pdf from the figures and manifest.json that the pipeline wrote.

Built with fpdf2 rather than matplotlib's PdfPages: fpdf2 lays out real text (wrapped captions,
tables that break across pages, headings, an outline, page numbers) and embeds each PNG once,
so the file stays small and its text can be searched and extracted. The report only prints
what the manifest says; every number in a caption was put there by the pipeline.

The bytes are deterministic: a fixed creation date, a content-derived /ID, no timings, and a
temp file in the target directory that `os.replace` moves into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from .pdf_layout import (
    FONT,
    GAP_MM,
    PT_TO_MM,
    ReportPDF,
    add_bullets,
    add_figure,
    add_heading,
    add_paragraph,
    add_table,
    format_cell,
    latin1,
)

logger = logging.getLogger(__name__)

FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)
"""Creation date written into every report, so reruns produce the same bytes."""

QUESTIONS: tuple[str, ...] = ("Q1", "Q2", "Q3", "Q4")
SECTION_HEADINGS: dict[str, str] = {
    "Q1": "Q1. Saliency maps: which pixels does the classifier's score depend on?",
    "Q2": "Q2. Filters: what input excites a filter, and where does it fire on real images?",
    "Q3": "Q3. LIME and the confusion matrix: what drives a prediction, and why do some "
    "classes do well?",
    "Q4": "Q4. Other methods: what do SmoothGrad, Gradient x Input, Integrated Gradients, "
    "Grad-CAM, LayerCAM and DeepDream show?",
    "Appendix": "Appendix",
}
TRUST_HEADING = "Which explanation to trust"
CUTS_HEADING = "What the time budget cut"
FAILURES_HEADING = "What failed"
MANIFEST_HEADING = "The manifest"

_MONO = "Courier"
_MONO_PT = 7.0


def _percent(value: float) -> str:
    """0.9312 -> "93.1%"."""
    return f"{100.0 * value:.1f}%"


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
    pdf.set_title(latin1(_title(manifest)))
    return pdf


def _title(manifest: dict[str, Any]) -> str:
    """The report's title: "Explaining <model name> on <dataset root>"."""
    model = (manifest.get("model") or {}).get("name", "the classifier")
    root = (manifest.get("dataset") or {}).get("root", "the data")
    return f"Explaining {model} on {root}"


def _join(values: Iterable[object]) -> str:
    """Comma-separated list for a table cell."""
    return ", ".join(str(v) for v in values)


def _summary_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Key/value rows for the title page; a missing manifest part just drops its rows."""
    tool = manifest.get("tool") or {}
    run = manifest.get("run") or {}
    model = manifest.get("model") or {}
    ckpt = manifest.get("checkpoint") or {}
    data = manifest.get("dataset") or {}
    prep = manifest.get("preprocess") or {}
    rows: list[tuple[str, str]] = []
    if model:
        parts = [str(model.get("name", "?"))]
        if isinstance(model.get("parameters"), int):
            parts.append(f"{model['parameters']:,} parameters")
        if model.get("input"):
            parts.append("input " + " x ".join(str(d) for d in model["input"]))
        rows.append(("model", ", ".join(parts)))
        if model.get("classes"):
            rows.append((f"classes ({len(model['classes'])})", _join(model["classes"])))
    if ckpt:
        rows.append(("checkpoint", str(ckpt.get("path", "-"))))
        if ckpt.get("sha256"):
            rows.append(("checkpoint sha256", str(ckpt["sha256"])))
    if data:
        rows.append(
            (
                "dataset",
                f"{data.get('root', '-')}, split {data.get('explained_split', '-')}, "
                f"{data.get('images', '-')} images",
            )
        )
    if prep:
        rows.append(
            ("preprocessing", _join(f"{k}={'none' if v is None else v}" for k, v in prep.items()))
        )
    check = manifest.get("input_check") or {}
    if check:
        rows.append(("input check", _input_check_text(check)))
    if "seed" in run:
        rows.append(("seed", str(run["seed"])))
    versions = []
    if tool:
        versions.append(f"{tool.get('name', 'hw5')} {tool.get('version', '?')}")
    if run.get("python"):
        versions.append(f"Python {run['python']}")
    if run.get("torch"):
        versions.append(f"PyTorch {run['torch']}")
    if versions:
        rows.append(("versions", ", ".join(versions)))
    machine = [str(run[k]) for k in ("platform", "device") if run.get(k)]
    if machine:
        rows.append(("machine", ", ".join(machine)))
    if run.get("command"):
        rows.append(("command", str(run["command"])))
    return rows


def _input_check_text(check: dict[str, Any]) -> str:
    """The check's one line, then each candidate convention's accuracy."""
    scores = [
        f"{_join(v for v in (c.get('channel_order'), c.get('reader'), c.get('scaling')) if v)}: "
        f"{c.get('accuracy', 0):.2f}"
        for c in check.get("candidates") or []
    ]
    return str(check.get("note", "")) + (f". Candidates: {'; '.join(scores)}" if scores else "")


def _title_page(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """Title, one line on what the report is, and the run's key/value table."""
    pdf.add_page()
    pdf.start_section("Title page")
    pdf.set_font(FONT, style="B", size=20)
    pdf.multi_cell(0, 10, latin1(_title(manifest)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(GAP_MM)
    add_paragraph(
        pdf,
        "NTU ML 2020 HW5: explaining the HW3 Food-11 CNN. Q1 saliency maps; Q2 filter "
        "visualization and activation maps; Q3 LIME and the confusion matrix; Q4 other "
        "explanation methods and which of them to trust. Each figure's caption gives the "
        "numbers behind it; the appendix lists the full manifest of this run.",
    )
    warning = (manifest.get("input_check") or {}).get("warning")
    if warning:  # explaining a model fed the wrong pixels: say so before anything else
        pdf.set_font(FONT, style="B", size=11)
        pdf.multi_cell(0, 6, latin1(f"Warning: {warning}."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(GAP_MM)
    rows = _summary_rows(manifest)
    if rows:
        add_table(pdf, [("item", "value"), *rows], col_widths=(1, 4.5))


def _accuracy(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """Q3 extras: overall and per-class accuracy, then the most frequent confusions."""
    acc = manifest.get("accuracy")
    if acc:
        add_heading(pdf, "Accuracy per class", level=1)
        overall = acc.get("overall")
        line = f"Overall accuracy: {_percent(overall)}" if overall is not None else "Accuracy"
        if acc.get("evaluated") is not None:
            line += f" on {acc['evaluated']} images"
        if acc.get("subset"):
            line += f" ({acc['subset']})"
        add_paragraph(pdf, line + ".")
        per_class = acc.get("per_class") or []
        classes = (manifest.get("model") or {}).get("classes") or []
        names = [classes[i] if i < len(classes) else f"class {i}" for i in range(len(per_class))]
        scored = [(n, a) for n, a in zip(names, per_class, strict=True) if a is not None]
        if scored:
            best = max(scored, key=lambda na: na[1])
            worst = min(scored, key=lambda na: na[1])
            add_paragraph(
                pdf,
                f"Best class: {best[0]} ({_percent(best[1])}); "
                f"worst class: {worst[0]} ({_percent(worst[1])}).",
            )
        if per_class:
            rows = [("class", "accuracy")]
            rows += [
                (n, "-" if a is None else _percent(a))
                for n, a in zip(names, per_class, strict=True)
            ]
            add_table(pdf, rows, width=100, col_widths=(3, 1), text_align=("LEFT", "RIGHT"))
    confusions = manifest.get("top_confusions")
    if confusions:
        add_heading(pdf, "Most frequent confusions", level=1)
        rows = [("true class", "predicted as", "images")]
        rows += [(str(c.get("true")), str(c.get("pred")), str(c.get("count"))) for c in confusions]
        add_table(pdf, rows, width=120, col_widths=(2, 2, 1), text_align=("LEFT", "LEFT", "RIGHT"))


def _trust(pdf: FPDF, trust: dict[str, Any]) -> None:
    """The "which explanation to trust" table and its notes."""
    add_heading(pdf, TRUST_HEADING, level=1)
    columns = [str(c) for c in trust.get("columns") or []]
    rows = [[format_cell(v) for v in row] for row in trust.get("rows") or []]
    if columns and rows:
        align = ("LEFT",) + ("RIGHT",) * (len(columns) - 1)
        add_table(pdf, [columns, *rows], size=8.0, text_align=align)
    if trust.get("notes"):
        add_paragraph(pdf, str(trust["notes"]))


def compact_json(obj: object) -> str:
    """Pretty JSON with sorted keys, but a list of plain values stays on one line (the manifest
    holds long lists of numbers and hashes that would otherwise take a line each)."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    scalar_list = re.compile(r"\[\n\s*((?:[^\[\]{}\n]+,\n\s*)*[^\[\]{}\n]+)\n\s*\]")
    return scalar_list.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def wrap_mono(text: str, width: int) -> list[str]:
    """Hard-wrap monospaced text to `width` characters; continuation lines keep the indent."""
    lines: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        cont = " " * (indent + 2) if indent + 2 < width // 2 else ""
        first, rest = line[:width], line[width:]
        lines.append(first)
        step = width - len(cont)
        lines.extend(cont + rest[i : i + step] for i in range(0, len(rest), step))
    return lines


def _manifest_text(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """The manifest as pretty, key-sorted JSON in Courier, wrapped to the page width."""
    add_heading(pdf, MANIFEST_HEADING, level=1)
    pdf.set_font(_MONO, size=_MONO_PT)
    width = int(pdf.epw / pdf.get_string_width("M"))
    text = latin1(compact_json(manifest))
    line_h = _MONO_PT * PT_TO_MM * 1.15
    for line in wrap_mono(text, width):
        pdf.cell(0, line_h, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


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


def build_report(manifest: dict[str, Any], out_dir: Path) -> bytes:
    """Lay out the whole report and return the PDF bytes (deterministic for equal inputs)."""
    pdf = _new_pdf(manifest)
    _title_page(pdf, manifest)
    groups = _grouped(manifest.get("figures") or [])
    number = 0
    for q in QUESTIONS:
        pdf.add_page()
        add_heading(pdf, SECTION_HEADINGS[q])
        if not groups[q]:
            add_paragraph(pdf, "No figures were produced for this question in this run.")
        for fig in groups[q]:
            number += 1
            add_figure(pdf, out_dir, fig, number)
        if q == "Q3":
            _accuracy(pdf, manifest)
        if q == "Q4" and manifest.get("trust"):
            _trust(pdf, manifest["trust"])
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
    _manifest_text(pdf, manifest)
    return bytes(pdf.output())


def write_report(manifest: dict[str, Any], out_dir: Path, path: Path) -> None:
    """Write report.pdf to `path` atomically; figure PNGs are read relative to `out_dir`."""
    data = build_report(manifest, Path(out_dir))
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
