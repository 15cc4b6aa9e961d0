"""fpdf2 layout primitives for the report: latin-1 text for the core fonts, headings, paragraphs,
tables sized to their contents, figures placed so they never overflow a page, bulleted lists."""

from __future__ import annotations

import io
import logging
import math
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpdf import FPDF, FontFace
from fpdf.enums import Align, WrapMode, XPos, YPos
from PIL import Image

logger = logging.getLogger(__name__)

FONT = "Helvetica"
BODY_PT = 10.0
LINE_MM = 5.0
GAP_MM = 2.0
_CAPTION_SHARE = 0.35  # at most this share of a page is reserved for a caption under its image
_SHRINK_TO_FIT = 0.75  # a figure may shrink to this share of its size to stay on the page
PT_TO_MM = 25.4 / 72.0

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


class ReportPDF(FPDF):
    """A4 portrait document with a page-number footer."""

    def footer(self) -> None:
        """Print "page k of n" centred at the bottom of every page."""
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.set_text_color(110)
        self.cell(0, 6, f"page {self.page_no()} of {{nb}}", align=Align.C)
        self.set_text_color(0)


def add_heading(pdf: FPDF, text: str, *, level: int = 0) -> None:
    """A bold heading that is also an outline entry; level 0 is a section, 1 a subsection."""
    size = 14.0 if level == 0 else 12.0
    if pdf.will_page_break(3 * LINE_MM + size * PT_TO_MM):
        pdf.add_page()
    pdf.start_section(latin1(text).split(":")[0], level=level)
    pdf.set_font(FONT, style="B", size=size)
    pdf.multi_cell(0, size * 0.5, latin1(text), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(GAP_MM)
    pdf.set_font(FONT, size=BODY_PT)


def add_paragraph(pdf: FPDF, text: str) -> None:
    """Wrapped body text followed by a small gap."""
    pdf.set_font(FONT, size=BODY_PT)
    pdf.multi_cell(0, LINE_MM, latin1(text), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(GAP_MM)


def _col_widths(pdf: FPDF, rows: Sequence[Sequence[str]], size: float) -> tuple[float, ...]:
    """Relative column widths: each column fits its longest word (in bold) without breaking it.

    Spare page width goes to the columns whose values would otherwise wrap, in proportion to
    how much they need, so text columns grow and numeric columns stay narrow.
    """
    pdf.set_font(FONT, style="B", size=size)
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


def add_table(
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
    pdf.set_font(FONT, size=size)
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
    pdf.ln(GAP_MM)
    pdf.set_font(FONT, size=BODY_PT)


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


def _text_room(pdf: FPDF, title: str, caption: str) -> float:
    """The height a figure's title and caption take, at most a share of the page."""
    pdf.set_font(FONT, style="B", size=BODY_PT)
    text_h = pdf.multi_cell(0, LINE_MM, title, align=Align.L, dry_run=True, output="HEIGHT")
    pdf.set_font(FONT, size=BODY_PT)
    if caption:
        text_h += pdf.multi_cell(0, LINE_MM, caption, align=Align.L, dry_run=True, output="HEIGHT")
    return min(text_h, _CAPTION_SHARE * (pdf.h - pdf.t_margin - pdf.b_margin))


def _title_and_caption(pdf: FPDF, title: str, caption: str) -> None:
    pdf.set_font(FONT, style="B", size=BODY_PT)
    pdf.multi_cell(0, LINE_MM, title, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if caption:
        pdf.set_font(FONT, size=BODY_PT)
        pdf.multi_cell(0, LINE_MM, caption, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2 * GAP_MM)


def add_picture(
    pdf: FPDF, im: Image.Image, title: str, caption: str = "", *, width: float | None = None
) -> None:
    """``im`` centred at ``width`` mm (page width by default), then its title and caption.

    The image never overflows: it is at most one page tall less room for its caption; if it
    does not fit in what is left of the page, it shrinks (to no less than 75%) or moves to a
    new page.
    """
    title, caption = latin1(title), latin1(caption)
    text_room = _text_room(pdf, title, caption)
    body_h = pdf.h - pdf.t_margin - pdf.b_margin
    px_w, px_h = im.size
    embedded = jpeg_copy(im)
    max_w = min(width or pdf.epw, pdf.epw)
    w, h = _fit_image(px_w, px_h, max_w, body_h - text_room - 2 * GAP_MM)
    left = pdf.page_break_trigger - pdf.y - GAP_MM - text_room
    if h > left >= _SHRINK_TO_FIT * h:  # shrinking a little beats a half-empty page
        w, h = _fit_image(px_w, px_h, max_w, left)
    elif h > left:
        pdf.add_page()
    pdf.image(embedded, x=pdf.l_margin + (pdf.epw - w) / 2, y=pdf.y, w=w, h=h)
    pdf.set_y(pdf.y + h + GAP_MM)
    _title_and_caption(pdf, title, caption)


def add_figure(pdf: FPDF, out_dir: Path, fig: dict[str, Any], number: int) -> None:
    """The PNG at page width (``add_picture``), then "Figure k. title" and its caption. A
    missing PNG leaves a note and the caption, not a crash."""
    title = latin1(f"Figure {number}. {fig.get('title', fig.get('id', ''))}")
    caption = latin1(fig.get("caption", ""))
    png = out_dir / str(fig["png"]) if fig.get("png") else None
    if png is not None and png.is_file():
        with Image.open(png) as im:
            add_picture(pdf, im, title, caption)
        return
    logger.warning("figure %s: PNG %s not found; caption only", fig.get("id"), png)
    if pdf.will_page_break(LINE_MM + _text_room(pdf, title, caption)):
        pdf.add_page()
    pdf.set_font(FONT, style="I", size=BODY_PT)
    missing = latin1(f"[image missing: {fig.get('png')}]")
    pdf.multi_cell(0, LINE_MM, missing, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    _title_and_caption(pdf, title, caption)


def add_bullets(pdf: FPDF, heading: str, items: Sequence[str]) -> None:
    """A heading and a bulleted list (the budget's cuts, the stages that failed)."""
    add_heading(pdf, heading)
    pdf.set_font(FONT, size=BODY_PT)
    for item in items:
        pdf.set_x(pdf.l_margin)
        pdf.cell(5, LINE_MM, "-")
        pdf.multi_cell(0, LINE_MM, latin1(item), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(GAP_MM)
