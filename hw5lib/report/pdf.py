"""report.pdf from the figures and manifest.json that the pipeline wrote.

Built with fpdf2 rather than matplotlib's PdfPages: fpdf2 lays out real text (wrapped captions,
tables that break across pages, headings, an outline, page numbers) and embeds each PNG once,
so the file stays small and its text can be searched and extracted. The report only prints
what the manifest says; every number in a caption was put there by the pipeline.

The bytes are deterministic: a fixed creation date, a content-derived /ID, no timings, and a
temp file in the target directory that `os.replace` moves into place.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from hw5lib.config import COURSE, OURS
from hw5lib.report.pdf_layout import (
    FONT,
    GAP_MM,
    ReportPDF,
    add_bullets,
    add_figure,
    add_heading,
    add_paragraph,
    add_table,
    format_cell,
    latin1,
)

if TYPE_CHECKING:
    from hw5lib.report.notes import Notes

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
FIGURES_HEADING = "The figures and their files"
NOTES_HEADING = "Notes"
FULL_RECORD = (
    "manifest.json holds the full record of this run: every parameter, input, number and "
    "output file with its sha256."
)
SHA_PREFIX = 12  # hex digits of a PNG's sha256: enough to tell two files apart by eye
SHORT_LIST = 4  # longer lists of numbers show as a range in the appendix table
PARAMETERS_CELL = 60  # characters of key parameters per figure in the appendix table


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
    """The report's title: "Explaining <model name> on <data folder name>"."""
    model = (manifest.get("model") or {}).get("name", "the classifier")
    root = (manifest.get("dataset") or {}).get("root") or "the given images"
    return f"Explaining {model} on {root}"


def _join(values: Iterable[object]) -> str:
    """Comma-separated list for a table cell."""
    return ", ".join(str(v) for v in values)


# The title page's word on which definitions of saliency, LIME and filter visualization apply.
CONVENTION_ROWS = {
    OURS: "this tool's saliency, LIME and filter visualization (bench/RESULTS.md measures them)",
    COURSE: "the HW5 sample code's saliency, LIME and filter visualization (--conventions course)",
}


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
        rows.append(("checkpoint", str(ckpt.get("file", "-"))))
        if ckpt.get("sha256"):
            rows.append(("checkpoint sha256", str(ckpt["sha256"])))
    if data:
        images = data.get("images", "-")
        count = len(images) if isinstance(images, list) else images
        rows.append(
            (
                "dataset",
                f"{data.get('root') or '-'}, split {data.get('explained_split') or '-'}, "
                f"{count} images explained",
            )
        )
        rows += _dataset_rows(data)
    if prep:
        rows.append(
            ("preprocessing", _join(f"{k}={'none' if v is None else v}" for k, v in prep.items()))
        )
    size = model.get("input_size") or {}
    if size.get("source") == "probed":
        rows.append(
            ("input size", f"{size['side']} x {size['side']}: the first side the model runs at")
        )
    head = model.get("output") or {}
    if head.get("kind", "logits") != "logits":
        rows.append(("model output", f"{head['kind']}: gradient methods and CAMs explain "
                     f"{head['explained']}; LIME and titles use the model's own probabilities"))  # fmt: skip
    check = manifest.get("input_check") or {}
    if check:
        rows.append(("input check", _input_check_text(check)))
    if "seed" in run:
        rows.append(("seed", str(run["seed"])))
    conventions = (manifest.get("parameters") or {}).get("conventions")
    if conventions in CONVENTION_ROWS:
        rows.append(("conventions", CONVENTION_ROWS[conventions]))
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
    replayed = manifest.get("replayed")
    if replayed:  # --replay: the decisions came from that manifest
        cut = f"; cut to fit the budget: {replayed['cut']}" if replayed.get("cut") else ""
        rows.append(("replayed manifest sha256", f"{replayed.get('sha256', '-')}{cut}"))
    return rows


def _dataset_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """What a CSV was read as, and the files whose label names no class."""
    rows = []
    csv = data.get("csv")
    if csv:
        low, high = csv["pixel_range"]
        rows.append(
            (
                "CSV",
                f"{csv['rows']} rows ({csv['layout']}) of {csv['side']}x{csv['side']} gray "
                f"pixels in [{low},{high}]",
            )
        )
    outside = data.get("labels_out_of_range")
    if outside:
        names = _join(f"{f['file']} ({f['label']})" for f in outside["files"][:3])
        more = f" and {outside['count'] - 3} more" if outside["count"] > 3 else ""
        rows.append(("labels out of range", f"{names}{more}: {outside['treated_as']}"))
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
        "numbers behind it; the appendix lists every figure with its parameters and file hash.",
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


def _parameter_text(value: object) -> str | None:
    """A parameter short enough for the appendix table: a scalar, a list of up to four of
    them, a range for a longer list of numbers; None for anything longer (in manifest.json)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return format_cell(value)
    if not isinstance(value, list | tuple) or not value:
        return None
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if numbers and len(value) > SHORT_LIST:
        lo, hi = format_cell(min(value)), format_cell(max(value))
        return lo if lo == hi else f"{lo}-{hi}"
    if len(value) <= SHORT_LIST and all(isinstance(v, str | int | float) for v in value):
        return ",".join(format_cell(v) for v in value)
    return None


def key_parameters(params: dict[str, Any]) -> str:
    """The short parameters of a figure, ``key=value; ...``, cut at a table cell's length."""
    parts = [f"{k}={t}" for k, v in params.items() if (t := _parameter_text(v)) is not None]
    kept: list[str] = []
    for part in parts:
        if len("; ".join([*kept, part])) > PARAMETERS_CELL:
            break
        kept.append(part)
    return "; ".join(kept) or "-"


def _figure_table(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """One row per figure: id, method, key parameters, its PNG's sha256 prefix; the rest of
    the record is manifest.json's (a JSON dump here took six pages)."""
    add_heading(pdf, FIGURES_HEADING, level=1)
    outputs = manifest.get("outputs") or {}
    rows = [("figure", "method", "key parameters", "PNG sha256")]
    for fig in manifest.get("figures") or []:
        title = str(fig.get("title", "")).split(":")[0]
        digest = str(outputs.get(fig.get("png"), ""))[:SHA_PREFIX] or "-"
        rows.append((str(fig.get("id")), title, key_parameters(fig.get("params") or {}), digest))
    if len(rows) > 1:
        add_table(pdf, rows, size=8.0)
    add_paragraph(pdf, FULL_RECORD)


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
    _figure_table(pdf, manifest)
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
