"""report.pdf's title page: the title, what the report is, a warning when the input check
doubts the pixels, and the run's key/value table (model, data, preprocessing, seed, versions,
command). Every value comes from the manifest; a missing part just drops its rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from hw5lib.config import COURSE, OURS
from hw5lib.report.pdf_layout import FONT, GAP_MM, add_paragraph, add_table, latin1


def report_title(manifest: dict[str, Any]) -> str:
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


def add_title_page(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """Title, one line on what the report is, and the run's key/value table."""
    pdf.add_page()
    pdf.start_section("Title page")
    pdf.set_font(FONT, style="B", size=20)
    pdf.multi_cell(0, 10, latin1(report_title(manifest)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
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
