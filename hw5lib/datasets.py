"""Datasets as sorted lists of images: Food-11 folders, ImageFolders and FER2013-style CSVs, their
splits and labels, and the object masks of a generated set."""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadImage, UserError

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
    """Food-11 names files ``<label>_<n>.jpg``; testing files carry no label."""
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
    an ImageFolder (one subfolder per class, optionally under train/ val/), or a FER2013-style
    CSV (``label,pixels[,Usage]``; a row is addressed as ``file.csv#row``)."""
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


@functools.lru_cache(maxsize=4)
def read_csv_rows(path: Path) -> tuple[tuple[int | None, str, str], ...]:
    """(label, pixels, usage) per row of a FER2013-style CSV, read once per run."""
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "pixels" not in header:
        raise UserError(
            f"{path} needs a 'pixels' column in its header (FER2013: emotion,pixels,Usage)"
        )
    pix = header.index("pixels")
    lab = next((i for i, h in enumerate(header) if h in ("emotion", "label")), None)
    use = header.index("usage") if "usage" in header else None
    return tuple(
        (
            int(r[lab]) if lab is not None and r[lab].strip() else None,
            r[pix],
            r[use] if use is not None else "",
        )
        for r in rows[1:]
        if r
    )


def csv_split(path: Path, preferred: Sequence[str]) -> ImageSet:
    """The rows of the first preferred split present in the Usage column (all rows if none)."""
    rows = read_csv_rows(path)
    usages = {u for _, _, u in rows}
    wanted = next((CSV_USAGE[p] for p in preferred if CSV_USAGE.get(p) in usages), None)
    picked = [i for i, (_, _, u) in enumerate(rows) if wanted is None or u == wanted]
    if not picked:
        raise UserError(f"{path} has no rows")
    return ImageSet(
        path, tuple(Path(f"{path}#{i}") for i in picked), tuple(rows[i][0] for i in picked)
    )


def csv_row_image(path: Path) -> Image.Image:
    """The grayscale square image of one CSV row (FER2013: 48x48)."""
    file, _, row = str(path).rpartition("#")
    rows = read_csv_rows(Path(file))
    try:
        values = np.array(rows[int(row)][1].split(), dtype=np.float64)
    except (IndexError, ValueError):
        raise BadImage(path, "no such row, or its pixels are not numbers") from None
    side = round(len(values) ** 0.5)
    if side * side != len(values) or not len(values):
        raise BadImage(path, f"{len(values)} pixels do not make a square image")
    return Image.fromarray(values.reshape(side, side).clip(0, 255).astype(np.uint8), "L")


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
