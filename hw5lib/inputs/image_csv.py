"""A CSV of square grayscale images, one per row (FER2013's ``emotion,pixels[,Usage]``, the 2019
course's ``label,feature``, an unlabelled ``id,feature``): its columns, labels, side and pixel
range found from the header and the first rows, read once per run; a row as an image."""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.errors import BadImage, UserError

PIXEL_COLUMNS = ("pixels", "feature", "features")  # FER2013 / the 2019 course's train.csv
LABEL_COLUMNS = ("emotion", "label")
SCALE_ROWS = 64  # rows whose values decide whether pixels are in [0,1] or [0,255]


@dataclass(frozen=True)
class CsvImages:
    """A CSV of square grayscale images, one per row: FER2013's ``emotion,pixels[,Usage]``, the
    2019 course's ``label,feature`` or an unlabelled ``id,feature``."""

    path: Path
    layout: str  # the header's columns, as the file names them
    side: int  # every row holds side * side pixels
    unit: bool  # pixel values in [0,1] (scaled by 255), else [0,255]
    rows: tuple[tuple[int | None, str, str], ...]  # (label, pixels, usage) per row

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "rows": len(self.rows),
            "side": self.side,
            "pixel_range": [0, 1] if self.unit else [0, 255],
        }


def csv_columns(path: Path, header: list[str]) -> tuple[int, int | None, int | None]:
    """Indices of the pixel, label and Usage columns, or a user error naming what is needed."""
    names = [h.strip().lower() for h in header]
    pix = next((names.index(c) for c in PIXEL_COLUMNS if c in names), None)
    if pix is None:
        raise UserError(
            f"{path} has no column of pixels (its header: {','.join(header) or 'empty'}); "
            "give a CSV with a header naming one: emotion,pixels[,Usage] (FER2013), "
            "label,feature, or id,feature for unlabelled rows"
        )
    lab = next((names.index(c) for c in LABEL_COLUMNS if c in names), None)
    use = names.index("usage") if "usage" in names else None
    return pix, lab, use


def csv_label(path: Path, line: int, text: str) -> int | None:
    """A row's class number ("3", or "3.0" as pandas writes it); None where it is empty."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise UserError(f"{path} line {line}: the label {text!r} is not a class number")
    return int(value)


def pixel_side(path: Path, count: int) -> int:
    """The side of a square image of ``count`` pixels, or a user error."""
    side = math.isqrt(count)
    if count == 0 or side * side != count:
        near = max(side, 1)
        raise UserError(
            f"{path}: its first row holds {count} pixels, which is no square image "
            f"({near}x{near} = {near * near}); every row must hold side x side gray values"
        )
    return side


def pixel_range(path: Path, rows: Sequence[tuple[int | None, str, str]]) -> bool:
    """True when the first rows' values all lie in [0,1] (floats to scale by 255), False for
    [0,255]; values outside both are a user error."""
    try:
        values = np.concatenate(
            [np.array(r[1].split(), dtype=np.float64) for r in rows[:SCALE_ROWS]]
        )
    except ValueError:
        raise UserError(f"{path}: the pixel column holds something other than numbers") from None
    low, high = float(values.min()), float(values.max())  # the first row holds some
    if not (np.isfinite(values).all() and low >= 0 and high <= 255):
        raise UserError(
            f"{path}: pixel values run from {low:g} to {high:g}; give gray values in [0,255] "
            "(integers or floats) or in [0,1]"
        )
    return high <= 1.0


@functools.lru_cache(maxsize=4)
def read_csv_images(path: Path) -> CsvImages:
    """The rows of an image CSV, read once per run; its layout, side and scale are found from
    the header and the first rows."""
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:  # Excel starts with a BOM
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    pix, lab, use = csv_columns(path, header)
    table = tuple(
        (
            csv_label(path, line, r[lab]) if lab is not None and lab < len(r) else None,
            r[pix] if pix < len(r) else "",
            r[use].strip() if use is not None and use < len(r) else "",
        )
        for line, r in enumerate(rows[1:], start=2)
        if r
    )
    if not table:
        raise UserError(f"{path} has a header but no rows")
    return CsvImages(
        path,
        ",".join(h.strip() for h in header),
        pixel_side(path, len(table[0][1].split())),
        pixel_range(path, table),
        table,
    )


def csv_row_image(path: Path) -> Image.Image:
    """The grayscale square image of one CSV row (FER2013: 48x48), as 8-bit pixels."""
    file, _, row = str(path).rpartition("#")
    table = read_csv_images(Path(file))
    try:
        values = np.array(table.rows[int(row)][1].split(), dtype=np.float64)
    except (IndexError, ValueError):
        raise BadImage(path, "no such row, or its pixels are not numbers") from None
    if len(values) != table.side**2:
        raise BadImage(path, f"{len(values)} pixels, not {table.side}x{table.side}")
    if table.unit:
        values = values * 255
    return Image.fromarray(
        values.reshape(table.side, -1).round().clip(0, 255).astype(np.uint8), "L"
    )
