"""The object masks of a generated sample set (``masks/`` beside its images): one image's, by
class where it holds several, and those of the explained images at the model's input size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


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
