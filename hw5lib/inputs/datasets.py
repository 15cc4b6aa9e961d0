"""Datasets as sorted lists of images: Food-11 folders, ImageFolders and FER2013-style CSVs
(image_csv.py), their splits and labels."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hw5lib.errors import UserError
from hw5lib.inputs.image_csv import CsvImages, read_csv_images

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


def load_split(folder: Path) -> ImageSet:
    """A Food-11 split (or any flat folder of images) as a sorted ImageSet."""
    paths = list_images(folder)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return ImageSet(folder, tuple(paths), tuple(label_of(p) for p in paths))
