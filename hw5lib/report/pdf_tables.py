"""report.pdf's tables of numbers from the manifest: accuracy per class and the most frequent
confusions (Q3), which explanation to trust (Q4), and the appendix's list of figures with
their key parameters and PNG hashes."""

from __future__ import annotations

from typing import Any

from fpdf import FPDF

from hw5lib.report.pdf_layout import add_heading, add_paragraph, add_table, format_cell

TRUST_HEADING = "Which explanation to trust"
FIGURES_HEADING = "The figures and their files"
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


def add_accuracy(pdf: FPDF, manifest: dict[str, Any]) -> None:
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


def add_trust_table(pdf: FPDF, trust: dict[str, Any]) -> None:
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


def add_figure_table(pdf: FPDF, manifest: dict[str, Any]) -> None:
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
