"""report.pdf from the figures and manifest.json that the pipeline wrote.

Built with fpdf2 rather than matplotlib's PdfPages: fpdf2 lays out real text (wrapped captions,
tables that break across pages, headings, an outline, page numbers) and embeds each PNG once,
so the file stays small and its text can be searched and extracted. The report only prints
what the manifest says; every number in a caption was put there by the pipeline.

The bytes are deterministic: a fixed creation date, a content-derived /ID, no timings, and a
temp file in the target directory that `os.replace` moves into place.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF, FontFace
from fpdf.enums import Align, WrapMode, XPos, YPos
from PIL import Image

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

_FONT = "Helvetica"
_MONO = "Courier"
_BODY_PT = 10.0
_LINE_MM = 5.0
_GAP_MM = 2.0
_CAPTION_SHARE = 0.35  # at most this share of a page is reserved for a caption under its image
_SHRINK_TO_FIT = 0.75  # a figure may shrink to this share of its size to stay on the page
_MONO_PT = 7.0
_PT_TO_MM = 25.4 / 72.0

# Characters that core fonts cannot encode, mapped to readable latin-1 stand-ins.
_REPLACEMENTS: dict[str, str] = {
    "\u00d7": "x",  # multiplication sign is latin-1, but "x" reads the same in every viewer
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2260": "!=",
    "\u2248": "~",
    "\u2212": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2010": "-",
    "\u2011": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u2022": "-",
    "\u00b7": ".",
    "\u2192": "->",
    "\u2190": "<-",
    "\u21d2": "=>",
    "\u221e": "inf",
    "\u2211": "sum",
    "\u2202": "d",
    "\u2207": "grad",
    "\u03b1": "alpha",
    "\u03b2": "beta",
    "\u03b3": "gamma",
    "\u03b4": "delta",
    "\u03b5": "eps",
    "\u03bb": "lambda",
    "\u03bc": "mu",
    "\u03c3": "sigma",
    "\u00a0": " ",
    "\t": "    ",
}


def latin1(text: object) -> str:
    """Return `text` as a string that fpdf core fonts can encode (latin-1, no control codes).

    Known symbols get ASCII stand-ins ("≥" -> ">="), accented letters lose their accent when
    that makes them latin-1, and anything else becomes "?". Newlines are kept.
    """
    out: list[str] = []
    for ch in str(text):
        if ch in _REPLACEMENTS:
            out.append(_REPLACEMENTS[ch])
        elif ch == "\n" or (" " <= ch <= "~") or ("\u00a1" <= ch <= "\u00ff"):
            out.append(ch)
        elif ch == "\r" or unicodedata.category(ch).startswith("C"):
            out.append(" " if ch != "\r" else "")
        else:
            base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            base = "".join(c for c in base if " " <= c <= "~" or "\u00a1" <= c <= "\u00ff")
            out.append(base or "?")
    return "".join(out)


def format_cell(value: object) -> str:
    """Format one table value: floats to 3 decimals, None as "-", bools as "yes"/"no"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return latin1(value)


def _percent(value: float) -> str:
    """0.9312 -> "93.1%"."""
    return f"{100.0 * value:.1f}%"


class _ReportPDF(FPDF):
    """A4 portrait document with a page-number footer."""

    def footer(self) -> None:
        """Print "page k of n" centred at the bottom of every page."""
        self.set_y(-12)
        self.set_font(_FONT, size=8)
        self.set_text_color(110)
        self.cell(0, 6, f"page {self.page_no()} of {{nb}}", align=Align.C)
        self.set_text_color(0)


def _new_pdf(manifest: dict[str, Any]) -> _ReportPDF:
    """A document with fixed metadata (no varying dates) and the report's margins."""
    pdf = _ReportPDF(orientation="portrait", unit="mm", format="A4")
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


def _heading(pdf: FPDF, text: str, *, level: int = 0) -> None:
    """A bold heading that is also an outline entry; level 0 is a section, 1 a subsection."""
    size = 14.0 if level == 0 else 12.0
    if pdf.will_page_break(3 * _LINE_MM + size * _PT_TO_MM):
        pdf.add_page()
    pdf.start_section(latin1(text).split(":")[0], level=level)
    pdf.set_font(_FONT, style="B", size=size)
    pdf.multi_cell(0, size * 0.5, latin1(text), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_GAP_MM)
    pdf.set_font(_FONT, size=_BODY_PT)


def _paragraph(pdf: FPDF, text: str) -> None:
    """Wrapped body text followed by a small gap."""
    pdf.set_font(_FONT, size=_BODY_PT)
    pdf.multi_cell(0, _LINE_MM, latin1(text), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_GAP_MM)


def _col_widths(pdf: FPDF, rows: Sequence[Sequence[str]], size: float) -> tuple[float, ...]:
    """Relative column widths: each column fits its longest word (in bold) without breaking it.

    Spare page width goes to the columns whose values would otherwise wrap, in proportion to
    how much they need, so text columns grow and numeric columns stay narrow.
    """
    pdf.set_font(_FONT, style="B", size=size)
    n = max(len(r) for r in rows)
    pad = 2.5
    word = [0.0] * n
    full = [0.0] * n
    for r, row in enumerate(rows):
        for i, value in enumerate(row):
            text = latin1(value)
            word[i] = max([word[i], *(pdf.get_string_width(w) + pad for w in text.split())])
            if r > 0:  # a long header may wrap at its spaces; the values set the width
                full[i] = max(full[i], pdf.get_string_width(text) + pad)
    full = [max(f, w) for f, w in zip(full, word, strict=True)]
    spare = max(pdf.epw - sum(word), 0.0)
    extra = [f - w for f, w in zip(full, word, strict=True)]
    total_extra = sum(extra) or 1.0
    grow = min(spare, total_extra) / total_extra
    return tuple(w + grow * e for w, e in zip(word, extra, strict=True))


def _table(
    pdf: FPDF,
    rows: Sequence[Sequence[str]],
    *,
    col_widths: Sequence[float] | None = None,
    width: float | None = None,
    size: float = 9.0,
    text_align: str | Sequence[str] = "LEFT",
) -> None:
    """A bordered table whose first row is the (bold, repeated) header."""
    widths = tuple(col_widths) if col_widths else _col_widths(pdf, rows, size)
    pdf.set_font(_FONT, size=size)
    with pdf.table(
        col_widths=widths,
        width=width,
        align="LEFT",
        text_align=text_align if isinstance(text_align, str) else tuple(text_align),
        headings_style=FontFace(emphasis="BOLD", fill_color=225),
        line_height=size * 0.5,
        wrapmode=WrapMode.WORD,
    ) as table:
        for values in rows:
            row = table.row()
            for value in values:
                row.cell(latin1(value))
    pdf.ln(_GAP_MM)
    pdf.set_font(_FONT, size=_BODY_PT)


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


def _title_page(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """Title, one line on what the report is, and the run's key/value table."""
    pdf.add_page()
    pdf.start_section("Title page")
    pdf.set_font(_FONT, style="B", size=20)
    pdf.multi_cell(0, 10, latin1(_title(manifest)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_GAP_MM)
    _paragraph(
        pdf,
        "NTU ML 2020 HW5: explaining the HW3 Food-11 CNN. Q1 saliency maps; Q2 filter "
        "visualization and activation maps; Q3 LIME and the confusion matrix; Q4 other "
        "explanation methods and which of them to trust. Each figure's caption gives the "
        "numbers behind it; the appendix lists the full manifest of this run.",
    )
    rows = _summary_rows(manifest)
    if rows:
        _table(pdf, [("item", "value"), *rows], col_widths=(1, 4.5))


def _fit_image(px_w: int, px_h: int, max_w: float, max_h: float) -> tuple[float, float]:
    """Largest (w, h) in mm with the image's aspect ratio inside max_w x max_h."""
    scale = min(max_w / px_w, max_h / px_h)
    return px_w * scale, px_h * scale


def jpeg_copy(im: Image.Image, quality: int = 90) -> io.BytesIO:
    """The figure as an RGB JPEG for embedding: noisy attribution maps make megabyte PNGs,
    and a report of twenty of them should still mail. libjpeg output is deterministic."""
    rgb = Image.new("RGB", im.size, "white")
    rgb.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality, optimize=True)
    buf.seek(0)
    return buf


def _figure(pdf: FPDF, out_dir: Path, fig: dict[str, Any], number: int) -> None:
    """The PNG at page width (shrunk to fit one page), then "Figure k. title" and its caption.

    The image never overflows: it is at most one page tall less room for its caption; if it
    does not fit in what is left of the page, it shrinks (to no less than 75%) or moves to a
    new page. A missing PNG leaves a note and the caption, not a crash.
    """
    title = latin1(f"Figure {number}. {fig.get('title', fig.get('id', ''))}")
    caption = latin1(fig.get("caption", ""))
    pdf.set_font(_FONT, style="B", size=_BODY_PT)
    text_h = pdf.multi_cell(0, _LINE_MM, title, align=Align.L, dry_run=True, output="HEIGHT")
    pdf.set_font(_FONT, size=_BODY_PT)
    if caption:
        text_h += pdf.multi_cell(0, _LINE_MM, caption, align=Align.L, dry_run=True, output="HEIGHT")
    body_h = pdf.h - pdf.t_margin - pdf.b_margin
    text_room = min(text_h, _CAPTION_SHARE * body_h)

    png = out_dir / str(fig["png"]) if fig.get("png") else None
    if png is not None and png.is_file():
        with Image.open(png) as im:
            px_w, px_h = im.size
            embedded = jpeg_copy(im)
        w, h = _fit_image(px_w, px_h, pdf.epw, body_h - text_room - 2 * _GAP_MM)
        left = pdf.page_break_trigger - pdf.y - _GAP_MM - text_room
        if h > left >= _SHRINK_TO_FIT * h:  # shrinking a little beats a half-empty page
            w, h = _fit_image(px_w, px_h, pdf.epw, left)
        elif h > left:
            pdf.add_page()
        pdf.image(embedded, x=pdf.l_margin + (pdf.epw - w) / 2, y=pdf.y, w=w, h=h)
        pdf.set_y(pdf.y + h + _GAP_MM)
    else:
        logger.warning("figure %s: PNG %s not found; caption only", fig.get("id"), png)
        if pdf.will_page_break(_LINE_MM + text_room):
            pdf.add_page()
        pdf.set_font(_FONT, style="I", size=_BODY_PT)
        missing = latin1(f"[image missing: {fig.get('png')}]")
        pdf.multi_cell(0, _LINE_MM, missing, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, style="B", size=_BODY_PT)
    pdf.multi_cell(0, _LINE_MM, title, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if caption:
        pdf.set_font(_FONT, size=_BODY_PT)
        pdf.multi_cell(0, _LINE_MM, caption, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2 * _GAP_MM)


def _accuracy(pdf: FPDF, manifest: dict[str, Any]) -> None:
    """Q3 extras: overall and per-class accuracy, then the most frequent confusions."""
    acc = manifest.get("accuracy")
    if acc:
        _heading(pdf, "Accuracy per class", level=1)
        overall = acc.get("overall")
        line = f"Overall accuracy: {_percent(overall)}" if overall is not None else "Accuracy"
        if acc.get("evaluated") is not None:
            line += f" on {acc['evaluated']} images"
        if acc.get("subset"):
            line += f" ({acc['subset']})"
        _paragraph(pdf, line + ".")
        per_class = acc.get("per_class") or []
        classes = (manifest.get("model") or {}).get("classes") or []
        names = [classes[i] if i < len(classes) else f"class {i}" for i in range(len(per_class))]
        scored = [(n, a) for n, a in zip(names, per_class, strict=True) if a is not None]
        if scored:
            best = max(scored, key=lambda na: na[1])
            worst = min(scored, key=lambda na: na[1])
            _paragraph(
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
            _table(pdf, rows, width=100, col_widths=(3, 1), text_align=("LEFT", "RIGHT"))
    confusions = manifest.get("top_confusions")
    if confusions:
        _heading(pdf, "Most frequent confusions", level=1)
        rows = [("true class", "predicted as", "images")]
        rows += [(str(c.get("true")), str(c.get("pred")), str(c.get("count"))) for c in confusions]
        _table(pdf, rows, width=120, col_widths=(2, 2, 1), text_align=("LEFT", "LEFT", "RIGHT"))


def _trust(pdf: FPDF, trust: dict[str, Any]) -> None:
    """The "which explanation to trust" table and its notes."""
    _heading(pdf, TRUST_HEADING, level=1)
    columns = [str(c) for c in trust.get("columns") or []]
    rows = [[format_cell(v) for v in row] for row in trust.get("rows") or []]
    if columns and rows:
        align = ("LEFT",) + ("RIGHT",) * (len(columns) - 1)
        _table(pdf, [columns, *rows], size=8.0, text_align=align)
    if trust.get("notes"):
        _paragraph(pdf, str(trust["notes"]))


def _bullets(pdf: FPDF, heading: str, items: Sequence[str]) -> None:
    """A heading and a bulleted list (the budget's cuts, the stages that failed)."""
    _heading(pdf, heading)
    pdf.set_font(_FONT, size=_BODY_PT)
    for item in items:
        pdf.set_x(pdf.l_margin)
        pdf.cell(5, _LINE_MM, "-")
        pdf.multi_cell(
            0, _LINE_MM, latin1(item), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.ln(_GAP_MM)


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
    _heading(pdf, MANIFEST_HEADING, level=1)
    pdf.set_font(_MONO, size=_MONO_PT)
    width = int(pdf.epw / pdf.get_string_width("M"))
    text = latin1(compact_json(manifest))
    line_h = _MONO_PT * _PT_TO_MM * 1.15
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
        _heading(pdf, SECTION_HEADINGS[q])
        if not groups[q]:
            _paragraph(pdf, "No figures were produced for this question in this run.")
        for fig in groups[q]:
            number += 1
            _figure(pdf, out_dir, fig, number)
        if q == "Q3":
            _accuracy(pdf, manifest)
        if q == "Q4" and manifest.get("trust"):
            _trust(pdf, manifest["trust"])
    if manifest.get("cuts"):
        _bullets(pdf, CUTS_HEADING, manifest["cuts"])
    if manifest.get("failures"):
        _bullets(
            pdf,
            FAILURES_HEADING,
            [
                f"{f['stage']}: {f['message']} (its figures are missing; every other stage ran)"
                for f in manifest["failures"]
            ],
        )
    pdf.add_page()
    _heading(pdf, SECTION_HEADINGS["Appendix"])
    for fig in groups["Appendix"]:
        number += 1
        _figure(pdf, out_dir, fig, number)
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
