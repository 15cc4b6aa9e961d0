"""Datasets as sorted lists of images: Food-11 folders, ImageFolders and FER2013-style CSVs, their
splits and labels, and the object masks of a generated set."""

from __future__ import annotations

import csv
import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.errors import BadImage, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("training", "validation", "testing")
_LABELLED = re.compile(r"^(\d+)_\d+$")  # Food-11: <label>_<n>.jpg


@dataclass(frozen=True)
class ImageSet:
    """Images in sorted order with their labels (None where the file name carries none)."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int | None, ...] = field(default=())
    classes: tuple[str, ...] | None = None  # class folder names of an ImageFolder

    def __len__(self) -> int:
        return len(self.paths)


def list_images(folder: Path) -> list[Path]:
    """Every image file directly in ``folder``, sorted by name (os.listdir order is arbitrary)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_of(path: Path) -> int | None:
    """Food-11 names files ``<label>_<n>.jpg``; testing files carry no label. A CSV row
    (``train.csv#5``) has the label of its row."""
    if ".csv#" in path.name and not path.is_file():
        file, _, row = str(path).rpartition("#")
        rows = read_csv_images(Path(file)).rows
        return rows[int(row)][0] if row.isdigit() and int(row) < len(rows) else None
    m = _LABELLED.match(path.stem)
    return int(m.group(1)) if m else None


EXPLAIN_SPLITS = ("validation", "val", "training", "train", "testing", "test")
LABELLED_SPLITS = ("validation", "val", "training", "train")
TRAIN_SPLITS = ("training", "train")
CSV_USAGE = {  # FER2013's Usage column, by the role a Food-11 split name plays
    "validation": "PublicTest",
    "val": "PublicTest",
    "training": "Training",
    "train": "Training",
    "testing": "PrivateTest",
    "test": "PrivateTest",
}


def has_class(label: int | None, num_classes: int) -> bool:
    """Does ``label`` name one of the model's classes? (``15_3.jpg`` in an 11-class folder,
    a CSV label of -1: no.)"""
    return label is not None and 0 <= label < num_classes


def out_of_range(split: ImageSet, num_classes: int) -> list[tuple[Path, int]]:
    """(file, label) of every file whose label names no class of the model."""
    return [
        (p, lb)
        for p, lb in zip(split.paths, split.labels, strict=True)
        if lb is not None and not has_class(lb, num_classes)
    ]


def within_classes(split: ImageSet, num_classes: int) -> ImageSet:
    """``split`` with every label that names no class set to None: such a file counts as
    unlabelled everywhere (the input check, the explained images, the confusion matrix)."""
    labels = tuple(lb if has_class(lb, num_classes) else None for lb in split.labels)
    return replace(split, labels=labels)


OUT_OF_RANGE_FATE = (
    "treated as unlabelled: left out of the input check, the confusion matrix and the "
    "accuracy, and explained (where picked) against the model's prediction"
)


def out_of_range_warning(
    named: Sequence[tuple[str, int]], count: int, num_classes: int, show: int = 3
) -> str:
    """One line for the user: how many files have a label outside the classes, the first few
    of ``named`` (file name, label), and what happens to them."""
    listed = ", ".join(f"{name} (label {label})" for name, label in named[:show])
    more = f", and {count - show} more" if count > show else ""
    return (
        f"{count} file{'s' if count != 1 else ''} with a label outside the model's {num_classes} "
        f"classes (0..{num_classes - 1}): {listed}{more}; {OUT_OF_RANGE_FATE}"
    )


def find_split(root: Path, preferred: Sequence[str] = EXPLAIN_SPLITS) -> Path:
    """The split to use: the first of ``preferred`` present under ``root``, or ``root`` itself."""
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the Food-11 root or one of its splits")
    for name in preferred:
        if (root / name).is_dir():
            return root / name
    return root


def open_dataset(root: Path, preferred: Sequence[str] = EXPLAIN_SPLITS) -> ImageSet:
    """One split of any supported layout, sorted: a Food-11 root or folder (``<label>_<n>.jpg``),
    an ImageFolder (one subfolder per class, optionally under train/ val/), or a CSV of gray
    images (``emotion,pixels[,Usage]``, ``label,feature``, ``id,feature``; a row is addressed
    as ``file.csv#row``)."""
    if root.suffix.lower() == ".csv":
        return csv_split(root, preferred)
    folder = find_split(root, preferred)
    if list_images(folder):
        return load_split(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and list_images(d))
    if not classes:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its class folders")
    paths: list[Path] = []
    labels: list[int | None] = []
    for i, name in enumerate(classes):
        found = list_images(folder / name)
        paths += found
        labels += [i] * len(found)
    return ImageSet(folder, tuple(paths), tuple(labels), tuple(classes))


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


def csv_images(data: Path | None) -> CsvImages | None:
    """The CSV a run reads its images from (None for a folder)."""
    return read_csv_images(data) if data is not None and data.suffix.lower() == ".csv" else None


def csv_split(path: Path, preferred: Sequence[str]) -> ImageSet:
    """The rows of the first preferred split present in the Usage column (all rows if none)."""
    rows = read_csv_images(path).rows
    usages = {u for _, _, u in rows}
    wanted = next((CSV_USAGE[p] for p in preferred if CSV_USAGE.get(p) in usages), None)
    picked = [i for i, (_, _, u) in enumerate(rows) if wanted is None or u == wanted]
    return ImageSet(
        path, tuple(Path(f"{path}#{i}") for i in picked), tuple(rows[i][0] for i in picked)
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


def load_split(folder: Path) -> ImageSet:
    """A Food-11 split (or any flat folder of images) as a sorted ImageSet."""
    paths = list_images(folder)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return ImageSet(folder, tuple(paths), tuple(label_of(p) for p in paths))


# ---------------------------------------------------------------- object masks of a generated set


def _relative(root: Path, image_path: Path | str) -> Path | None:
    path = Path(image_path)
    if not path.is_absolute():
        return path
    try:
        return path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return None


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) >= 128


def load_mask(root: Path, image_path: Path | str, *, label: int | None = None) -> np.ndarray | None:
    """The [H, W] bool object mask of an image of a generated set, or None if it has none.

    ``image_path`` is absolute or relative to ``root``; for ``expression`` sets it is
    ``fer2013.csv#<row>``. An image holding several objects (``both.jpg``) gives the mask of
    class ``label`` if one is given, else the union of its masks.
    """
    root = Path(root)
    rel = _relative(root, image_path)
    if rel is None:
        return None
    if "#" in rel.name:  # a CSV row
        row = rel.name.split("#", 1)[1]
        path = root / "masks" / f"{row}.png"
        return _read_mask(path) if row.isdigit() and path.is_file() else None
    path = root / "masks" / rel.with_suffix(".png")
    if path.is_file():
        return _read_mask(path)
    parts = sorted(path.parent.glob(f"{rel.stem}_*.png")) if path.parent.is_dir() else []
    if label is not None:
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            return None
        names = classes_file.read_text().splitlines()
        if not 0 <= label < len(names):
            return None
        wanted = path.parent / f"{rel.stem}_{names[label]}.png"
        return _read_mask(wanted) if wanted in parts else None
    if not parts:
        return None
    masks = [_read_mask(p) for p in parts]
    return np.logical_or.reduce(masks)


def object_masks(root: Path, paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray | None:
    """Masks of every explained image, resized to the model input (nearest); None unless all
    of them have one."""
    masks = []
    for p in paths:
        m = load_mask(root, p)
        if m is None:
            return None
        im = Image.fromarray(m.astype(np.uint8) * 255).resize(size[::-1], Image.Resampling.NEAREST)
        masks.append(np.asarray(im) > 127)
    return np.stack(masks)
